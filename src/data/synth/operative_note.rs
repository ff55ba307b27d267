//! Operative notes: upper-case headed sections (the classic dictation), a two-column form,
//! and a narrative paragraph. Answer: diagnoses, procedure, surgeon, anesthesia, blood loss
//! (mL), complications, specimens, drains.

use super::{allergies, allergy_text, date, date_text, person, Block, Doc, Rng};
use serde_json::json;

/// `(procedure, preoperative diagnosis, postoperative diagnosis, specimen, drain)`.
const CASES: &[(&str, &str, &str, &str, &str)] = &[
    ("laparoscopic cholecystectomy", "symptomatic cholelithiasis", "chronic cholecystitis", "gallbladder", "none"),
    ("laparoscopic appendectomy", "acute appendicitis", "perforated appendicitis", "appendix", "19 Fr Blake drain"),
    ("right inguinal hernia repair with mesh", "right inguinal hernia", "right indirect inguinal hernia", "none", "none"),
    ("left total knee arthroplasty", "left knee osteoarthritis", "left knee osteoarthritis", "none", "none"),
    ("open reduction internal fixation of right distal radius", "right distal radius fracture", "right distal radius fracture", "none", "none"),
    ("exploratory laparotomy with small bowel resection", "small bowel obstruction", "small bowel obstruction with ischemic segment", "small bowel segment", "Jackson-Pratt drain"),
    ("excisional biopsy of left breast mass", "left breast mass", "left breast mass", "left breast mass", "none"),
    ("right carpal tunnel release", "right carpal tunnel syndrome", "right carpal tunnel syndrome", "none", "none"),
    ("transurethral resection of bladder tumor", "bladder tumor", "bladder tumor", "bladder tumor", "three-way Foley catheter"),
    ("left thyroid lobectomy", "left thyroid nodule", "left thyroid nodule", "left thyroid lobe", "none"),
];

const ANESTHESIA: &[&str] = &["general endotracheal", "spinal", "monitored anesthesia care", "regional block with sedation", "general with LMA"];

/// One operative note.
pub fn generate(rng: &mut Rng) -> Doc {
    let (procedure, pre, post, specimen, drain) = *rng.pick(CASES);
    let surgeon = person(rng);
    let assistant = person(rng);
    let anesthesia = rng.pick(ANESTHESIA).to_string();
    let ebl = *rng.pick(&[5i64, 10, 20, 25, 50, 75, 100, 150, 200, 300, 450]);
    let complication = if rng.chance(0.85) { "none" } else { *rng.pick(&["serosal tear repaired primarily", "bleeding from cystic artery controlled with clips", "transient hypotension"]) };
    let target = json!({
        "preoperative_diagnosis": pre, "postoperative_diagnosis": post, "procedure": procedure, "surgeon": surgeon,
        "anesthesia": anesthesia, "estimated_blood_loss_ml": ebl, "complications": complication, "specimens": specimen, "drains": drain,
    });
    let day = date(rng);
    let day = date_text(rng, day);
    let allergy = allergies(rng);
    let allergy_line = allergy_text(rng, &allergy);
    let ebl_text = match rng.int(0, 2) {
        0 => format!("{ebl} mL"),
        1 => format!("{ebl} cc"),
        _ => format!("approximately {ebl} mL"),
    };
    let none_word = |rng: &mut Rng, v: &str| if v == "none" { rng.pick(&["None", "None.", "none"]).to_string() } else { super::cardiology::capitalize(v) };
    let layout = rng.int(0, 2) as usize;
    let mut blocks = Vec::new();
    match layout {
        0 => {
            blocks.push(Block::Title(rng.pick(&["OPERATIVE REPORT", "OPERATIVE NOTE", "BRIEF OPERATIVE NOTE"]).to_string()));
            blocks.push(Block::Line(format!("DATE OF OPERATION: {day}")));
            blocks.push(Block::Line(format!("PREOPERATIVE DIAGNOSIS: {}.", super::cardiology::capitalize(pre))));
            blocks.push(Block::Line(format!("POSTOPERATIVE DIAGNOSIS: {}.", super::cardiology::capitalize(post))));
            blocks.push(Block::Line(format!("PROCEDURE: {}.", super::cardiology::capitalize(procedure))));
            blocks.push(Block::Line(format!("SURGEON: {surgeon}, MD")));
            blocks.push(Block::Line(format!("ASSISTANT: {assistant}, PA-C")));
            blocks.push(Block::Line(format!("ANESTHESIA: {}.", super::cardiology::capitalize(&anesthesia))));
            blocks.push(Block::Line(format!("ESTIMATED BLOOD LOSS: {ebl_text}.")));
            blocks.push(Block::Line(format!("COMPLICATIONS: {}", none_word(rng, complication))));
            let spec = if specimen == "none" { none_word(rng, specimen) } else { format!("{} to pathology.", super::cardiology::capitalize(specimen)) };
            blocks.push(Block::Line(format!("SPECIMENS: {spec}")));
            blocks.push(Block::Line(format!("DRAINS: {}", none_word(rng, drain))));
            blocks.push(Block::Line(format!("ALLERGIES: {allergy_line}")));
            blocks.push(Block::Gap);
            blocks.push(Block::Line("INDICATIONS: The risks, benefits and alternatives were discussed and consent was obtained.".into()));
        }
        1 => {
            blocks.push(Block::Title("Operative Record".into()));
            blocks.push(Block::Table {
                header: vec!["Field".into(), "Entry".into()],
                rows: vec![
                    vec!["Date".into(), day],
                    vec!["Pre-op diagnosis".into(), pre.into()],
                    vec!["Post-op diagnosis".into(), post.into()],
                    vec!["Procedure".into(), procedure.into()],
                    vec!["Surgeon".into(), format!("Dr. {surgeon}")],
                    vec!["Assistant".into(), assistant],
                    vec!["Anesthesia".into(), anesthesia.clone()],
                    vec!["EBL".into(), ebl_text],
                    vec!["Complications".into(), complication.into()],
                    vec!["Specimens".into(), specimen.into()],
                    vec!["Drains".into(), drain.into()],
                    vec!["Allergies".into(), allergy_line],
                ],
            });
        }
        _ => {
            blocks.push(Block::Title(rng.pick(&["Operative Summary", "Procedure Note"]).to_string()));
            blocks.push(Block::Line(format!("Date: {day}")));
            blocks.push(Block::Gap);
            let comp = if complication == "none" { "There were no complications.".to_owned() } else { format!("Complications: {complication}.") };
            let spec = if specimen == "none" { "No specimens were sent.".to_owned() } else { format!("The {specimen} was sent to pathology.") };
            let drains = if drain == "none" { "No drains were placed.".to_owned() } else { format!("A {drain} was left in place.") };
            blocks.push(Block::Line(format!(
                "Under {anesthesia} anesthesia, Dr. {surgeon} performed a {procedure} for {pre}, assisted by {assistant}. \
The postoperative diagnosis was {post}. Estimated blood loss was {ebl_text}. {comp} {spec} {drains}"
            )));
            blocks.push(Block::Line(format!("Allergies: {allergy_line}.")));
        }
    }
    Doc { blocks, target, layout }
}
