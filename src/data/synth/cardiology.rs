//! Cardiology documents: consult note with headers, echo report with tables, clinic letter.
//! Answer: age, sex, rhythm, HR, BP, LVEF, diagnoses, medications (drug dose route
//! frequency), allergies.

use super::{allergies, allergy_text, date, date_text, person, Block, Doc, Rng};
use serde_json::json;

const RHYTHMS: &[&str] = &["sinus rhythm", "atrial fibrillation", "sinus tachycardia", "sinus bradycardia", "atrial flutter", "paced rhythm"];

const DIAGNOSES: &[&str] = &[
    "hypertension",
    "coronary artery disease",
    "hyperlipidemia",
    "type 2 diabetes mellitus",
    "aortic stenosis",
    "mitral regurgitation",
    "chronic kidney disease stage 3",
    "obstructive sleep apnea",
];

/// `(drug, dose, route, frequency)`.
const MEDS: &[(&str, &str, &str, &str)] = &[
    ("metoprolol succinate", "50 mg", "PO", "daily"),
    ("metoprolol tartrate", "25 mg", "PO", "BID"),
    ("lisinopril", "10 mg", "PO", "daily"),
    ("atorvastatin", "40 mg", "PO", "nightly"),
    ("apixaban", "5 mg", "PO", "BID"),
    ("furosemide", "40 mg", "IV", "BID"),
    ("aspirin", "81 mg", "PO", "daily"),
    ("sacubitril-valsartan", "24-26 mg", "PO", "BID"),
    ("spironolactone", "25 mg", "PO", "daily"),
    ("amiodarone", "200 mg", "PO", "daily"),
    ("clopidogrel", "75 mg", "PO", "daily"),
    ("heparin", "5000 units", "SC", "q8h"),
];

/// One cardiology document.
pub fn generate(rng: &mut Rng) -> Doc {
    let name = person(rng);
    let age = rng.int(34, 92);
    let male = rng.chance(0.5);
    let rhythm = rng.pick(RHYTHMS).to_string();
    let hr = match rhythm.as_str() {
        "sinus tachycardia" => rng.int(101, 135),
        "sinus bradycardia" => rng.int(38, 58),
        "paced rhythm" => 60 + 10 * rng.int(0, 2),
        _ => rng.int(60, 118),
    };
    let (sys, dia) = (rng.int(92, 178), rng.int(52, 102));
    let lvef = 5 * rng.int(3, 14);
    let n_dx = rng.int(1, 3) as usize;
    let mut dx: Vec<String> = rng.sample(DIAGNOSES, n_dx).into_iter().map(str::to_owned).collect();
    if lvef < 40 {
        dx.insert(0, "heart failure with reduced ejection fraction".into());
    }
    if matches!(rhythm.as_str(), "atrial fibrillation" | "atrial flutter") {
        dx.insert(0, rhythm.clone());
    }
    let n_meds = rng.int(2, 4) as usize;
    let meds: Vec<(&str, &str, &str, &str)> = rng.sample(MEDS, n_meds);
    let med_strings: Vec<String> = meds.iter().map(|(d, dose, r, f)| format!("{d} {dose} {r} {f}")).collect();
    let allergy = allergies(rng);
    let sex = if male { "M" } else { "F" };
    let target = json!({
        "age": age, "sex": sex, "rhythm": rhythm, "hr_bpm": hr, "bp_mmhg": format!("{sys}/{dia}"), "lvef_pct": lvef,
        "diagnoses": dx, "medications": med_strings, "allergies": allergy,
    });
    let day = date(rng);
    let day = date_text(rng, day);
    let allergy_line = allergy_text(rng, &allergy);
    let cardiologist = person(rng);
    let layout = rng.int(0, 2) as usize;
    let mut blocks = Vec::new();
    match layout {
        0 => {
            blocks.push(Block::Title(rng.pick(&["CARDIOLOGY CONSULTATION", "Cardiology Consult Note", "CARDIOLOGY INPATIENT CONSULT"]).to_string()));
            let who = if rng.chance(0.5) { format!("{age}-year-old {}", if male { "male" } else { "female" }) } else { format!("{age} y/o {sex}") };
            blocks.push(Block::Fields(vec![("Patient".into(), name), ("Date".into(), day), ("Consultant".into(), format!("{cardiologist}, MD"))]));
            blocks.push(Block::Gap);
            blocks.push(Block::Line(format!("HPI: {who} seen for {}.", rng.pick(&["dyspnea on exertion", "palpitations", "chest pain", "preoperative evaluation", "leg swelling"]))));
            blocks.push(Block::Line(format!("Vitals: HR {hr} bpm, BP {sys}/{dia} mmHg.")));
            blocks.push(Block::Line(format!("ECG: {}.", capitalize(&rhythm))));
            blocks.push(Block::Line(format!("Echo: LVEF {lvef}%.")));
            blocks.push(Block::Line(format!("Allergies: {allergy_line}")));
            blocks.push(Block::Gap);
            blocks.push(Block::Heading("Assessment".into()));
            blocks.extend(dx.iter().enumerate().map(|(i, d)| Block::Line(format!("{}. {}", i + 1, capitalize(d)))));
            blocks.push(Block::Gap);
            blocks.push(Block::Heading("Medications".into()));
            blocks.extend(med_strings.iter().map(|m| Block::Line(format!("- {m}"))));
        }
        1 => {
            blocks.push(Block::Title(rng.pick(&["TRANSTHORACIC ECHOCARDIOGRAM REPORT", "Echocardiography Report"]).to_string()));
            blocks.push(Block::Fields(vec![
                ("Name".into(), name),
                ("Age/Sex".into(), format!("{age}/{sex}")),
                ("Study date".into(), day),
                ("Rhythm".into(), rhythm.clone()),
                ("HR".into(), format!("{hr} bpm")),
                ("BP".into(), format!("{sys}/{dia} mmHg")),
            ]));
            blocks.push(Block::Gap);
            let lvidd = format!("{:.1}", rng.float(3.8, 6.8, 1));
            blocks.push(Block::Table {
                header: vec!["Measurement".into(), "Value".into(), "Normal".into()],
                rows: vec![
                    vec!["LVEF (biplane)".into(), format!("{lvef} %"), "52-72 %".into()],
                    vec!["LVIDd".into(), format!("{lvidd} cm"), "3.9-5.3 cm".into()],
                    vec!["LA volume index".into(), format!("{} mL/m2", rng.int(18, 60)), "< 34 mL/m2".into()],
                ],
            });
            blocks.push(Block::Gap);
            blocks.push(Block::Line(format!("Indications: {}", dx.join("; "))));
            blocks.push(Block::Gap);
            blocks.push(Block::Heading("Current medications".into()));
            blocks.push(Block::Table {
                header: vec!["Drug".into(), "Dose".into(), "Route".into(), "Frequency".into()],
                rows: meds.iter().map(|(d, dose, r, f)| vec![d.to_string(), dose.to_string(), r.to_string(), f.to_string()]).collect(),
            });
            blocks.push(Block::Line(format!("Allergies: {allergy_line}")));
            blocks.push(Block::Line(format!("Read by {cardiologist}, MD")));
        }
        _ => {
            blocks.push(Block::Title("Heart & Vascular Clinic".into()));
            blocks.push(Block::Line(day));
            blocks.push(Block::Gap);
            blocks.push(Block::Line(format!("Dear Dr. {},", rng.pick(super::vocab::LAST))));
            let (title, noun, pron) = if male { ("Mr.", "man", "He") } else { ("Ms.", "woman", "She") };
            let last = name.split(' ').nth(1).unwrap_or("").to_owned();
            let article = if age == 11 || age == 18 || (80..90).contains(&age) { "an" } else { "a" };
            blocks.push(Block::Line(format!(
                "I saw {title} {last}, {article} {age}-year-old {noun}, in clinic today. {pron} has a history of {}. \
On examination the heart rate was {hr} bpm and blood pressure {sys}/{dia} mmHg. The ECG shows {rhythm}. \
Echocardiography demonstrates a left ventricular ejection fraction of {lvef}%.",
                join_and(&dx)
            )));
            blocks.push(Block::Line(format!("{pron} takes {}.", join_and(&med_strings))));
            let allergy_sentence = if allergy.is_empty() { format!("{pron} has no known drug allergies.") } else { format!("{pron} is allergic to {}.", join_and(&allergy)) };
            blocks.push(Block::Line(allergy_sentence));
            blocks.push(Block::Gap);
            blocks.push(Block::Line(format!("Sincerely,\n{cardiologist}, MD")));
        }
    }
    Doc { blocks, target, layout }
}

/// First letter upper-case.
pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// `a`, `a and b`, `a, b and c`.
pub fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}
