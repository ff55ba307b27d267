//! Laboratory panels (BMP, CBC, liver, coagulation, lipid) with units, reference ranges and
//! H/L flags. Layouts: full table, dotted-leader report, one-line compact summary with
//! abbreviations. Answer: panel, collection time, results (analyte -> "value unit"),
//! abnormal flags.

use super::{date, fmt_num, Block, Doc, Rng};
use serde_json::{json, Map, Value};

/// One analyte: answer key, printed name, abbreviation, unit, reference range, decimals.
struct Analyte {
    key: &'static str,
    name: &'static str,
    abbr: &'static str,
    unit: &'static str,
    low: f64,
    high: f64,
    dec: u32,
}

const fn a(key: &'static str, name: &'static str, abbr: &'static str, unit: &'static str, low: f64, high: f64, dec: u32) -> Analyte {
    Analyte { key, name, abbr, unit, low, high, dec }
}

/// `(panel name, short name, analytes)`.
const PANELS: &[(&str, &str, &[Analyte])] = &[
    ("Basic metabolic panel", "BMP", &[
        a("sodium", "Sodium", "Na", "mmol/L", 136.0, 145.0, 0),
        a("potassium", "Potassium", "K", "mmol/L", 3.5, 5.1, 1),
        a("chloride", "Chloride", "Cl", "mmol/L", 98.0, 107.0, 0),
        a("bicarbonate", "Bicarbonate", "HCO3", "mmol/L", 22.0, 29.0, 0),
        a("bun", "Urea nitrogen", "BUN", "mg/dL", 7.0, 20.0, 0),
        a("creatinine", "Creatinine", "Cr", "mg/dL", 0.6, 1.3, 2),
        a("glucose", "Glucose", "Glu", "mg/dL", 70.0, 99.0, 0),
    ]),
    ("Complete blood count", "CBC", &[
        a("wbc", "White blood cells", "WBC", "10^3/uL", 4.0, 11.0, 1),
        a("hemoglobin", "Hemoglobin", "Hgb", "g/dL", 12.0, 17.5, 1),
        a("hematocrit", "Hematocrit", "Hct", "%", 36.0, 52.0, 1),
        a("platelets", "Platelets", "Plt", "10^3/uL", 150.0, 400.0, 0),
        a("mcv", "Mean corpuscular volume", "MCV", "fL", 80.0, 100.0, 0),
    ]),
    ("Hepatic function panel", "LFT", &[
        a("ast", "Aspartate aminotransferase", "AST", "U/L", 10.0, 40.0, 0),
        a("alt", "Alanine aminotransferase", "ALT", "U/L", 7.0, 56.0, 0),
        a("alkaline_phosphatase", "Alkaline phosphatase", "ALP", "U/L", 44.0, 147.0, 0),
        a("total_bilirubin", "Total bilirubin", "T bili", "mg/dL", 0.1, 1.2, 1),
        a("albumin", "Albumin", "Alb", "g/dL", 3.5, 5.0, 1),
    ]),
    ("Coagulation panel", "Coags", &[
        a("pt", "Prothrombin time", "PT", "s", 11.0, 13.5, 1),
        a("inr", "INR", "INR", "", 0.8, 1.1, 1),
        a("aptt", "Activated partial thromboplastin time", "aPTT", "s", 25.0, 35.0, 0),
        a("fibrinogen", "Fibrinogen", "Fib", "mg/dL", 200.0, 400.0, 0),
    ]),
    ("Lipid panel", "Lipids", &[
        a("total_cholesterol", "Total cholesterol", "TC", "mg/dL", 125.0, 200.0, 0),
        a("ldl", "LDL cholesterol", "LDL", "mg/dL", 0.0, 100.0, 0),
        a("hdl", "HDL cholesterol", "HDL", "mg/dL", 40.0, 90.0, 0),
        a("triglycerides", "Triglycerides", "TG", "mg/dL", 0.0, 150.0, 0),
    ]),
];

/// `value unit` (just the value for unitless results such as INR).
fn with_unit(v: &str, unit: &str) -> String {
    if unit.is_empty() { v.to_owned() } else { format!("{v} {unit}") }
}

/// One lab report.
pub fn generate(rng: &mut Rng) -> Doc {
    let (panel, short, analytes) = rng.pick(PANELS);
    let (y, m, d) = date(rng);
    let (hh, mm) = (rng.int(0, 23), 5 * rng.int(0, 11));
    let collected = format!("{y}-{m:02}-{d:02} {hh:02}:{mm:02}");
    let mut results = Map::new();
    let mut abnormal = Vec::new();
    let mut rows = Vec::new(); // (analyte, printed value, flag)
    for an in analytes.iter() {
        let span = an.high - an.low;
        let x = match rng.int(0, 7) {
            0 => an.low - span * rng.float(0.05, 0.4, 3),
            1 => an.high + span * rng.float(0.05, 0.8, 3),
            _ => an.low + span * rng.float(0.05, 0.95, 3),
        };
        let x = super::round(x.max(0.0), an.dec);
        let v = fmt_num(x, an.dec);
        let flag = if x < an.low { "L" } else if x > an.high { "H" } else { "" };
        if !flag.is_empty() {
            abnormal.push(format!("{} {flag}", an.key));
        }
        results.insert(an.key.to_owned(), Value::String(with_unit(&v, an.unit)));
        rows.push((an, v, flag));
    }
    let target = json!({ "panel": panel, "collected": collected, "results": results, "abnormal": abnormal });
    let range = |an: &Analyte| {
        let r = if an.low == 0.0 { format!("<{}", fmt_num(an.high, an.dec)) } else { format!("{}-{}", fmt_num(an.low, an.dec), fmt_num(an.high, an.dec)) };
        r
    };
    let when = match rng.int(0, 2) {
        0 => collected.clone(),
        1 => format!("{m:02}/{d:02}/{y} {hh:02}{mm:02}"),
        _ => format!("{d:02}-{}-{y} {hh:02}:{mm:02}", ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(m - 1) as usize]),
    };
    let lab = rng.pick(&["Central Laboratory", "Core Lab - St. Anne Hospital", "Riverside Clinical Laboratory"]).to_string();
    let mrn = rng.int(1_000_000, 9_999_999).to_string();
    let layout = rng.int(0, 2) as usize;
    let mut blocks = Vec::new();
    match layout {
        0 => {
            blocks.push(Block::Title(lab));
            blocks.push(Block::Fields(vec![
                ("Patient".into(), super::person(rng)),
                ("MRN".into(), mrn),
                ("Collected".into(), when),
                ("Test".into(), format!("{panel} ({short})")),
            ]));
            blocks.push(Block::Gap);
            blocks.push(Block::Table {
                header: ["Test", "Result", "Flag", "Units", "Reference range"].map(str::to_owned).to_vec(),
                rows: rows.iter().map(|(an, v, f)| vec![an.name.to_owned(), v.clone(), f.to_string(), an.unit.to_owned(), range(an)]).collect(),
            });
            blocks.push(Block::Gap);
            blocks.push(Block::Line("H = above reference range, L = below reference range.".into()));
        }
        1 => {
            blocks.push(Block::Title(format!("{} REPORT", panel.to_uppercase())));
            blocks.push(Block::Line(format!("Specimen collected {when}   MRN {mrn}")));
            blocks.push(Block::Gap);
            for (an, v, f) in &rows {
                let dots = ".".repeat(32usize.saturating_sub(an.name.len()).max(3));
                let flag = if f.is_empty() { "  ".to_owned() } else { format!(" {f}") };
                blocks.push(Block::Line(format!("{}{dots} {}{flag}   ({} {})", an.name, v, range(an), an.unit).trim_end().replace(" )", ")")));
            }
            blocks.push(Block::Gap);
            blocks.push(Block::Line(format!("Performed at {lab}.")));
        }
        _ => {
            let items: Vec<String> = rows
                .iter()
                .map(|(an, v, f)| {
                    let flag = if f.is_empty() { String::new() } else { format!(" ({f})") };
                    format!("{} {}{flag} [{}{}]", an.abbr, v, range(an), if an.unit.is_empty() { String::new() } else { format!(" {}", an.unit) })
                })
                .collect();
            blocks.push(Block::Line(format!("Labs {when} - {panel}:")));
            blocks.push(Block::Line(items.join(", ")));
        }
    }
    Doc { blocks, target, layout }
}
