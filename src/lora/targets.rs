//! Which modules get LoRA adapters, with PEFT's semantics for a list of `target_modules`
//! (peft `tuners/tuners_utils.py::check_target_module_exists`): a module is targeted when its
//! full name equals an entry or ends with `.` + the entry. So `gate_proj` also hits the
//! Qwen2.5-VL vision MLPs (`visual.blocks.N.mlp.gate_proj`), as it does in PEFT.

use crate::model::inventory::{TensorKind, TensorSpec};

/// The seven projections QLoRA recipes target in Qwen2-family models.
pub const ALL_PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// True when module `name` (e.g. `model.layers.3.self_attn.q_proj`) is targeted.
pub fn is_targeted(name: &str, targets: &[String]) -> bool {
    targets.iter().any(|t| name == t || name.strip_suffix(t.as_str()).is_some_and(|head| head.ends_with('.')))
}

/// `(module, in_features, out_features)` of every targeted linear in an inventory.
pub fn targeted_linears<'a>(tensors: &'a [TensorSpec], targets: &'a [String]) -> impl Iterator<Item = (&'a str, usize, usize)> + 'a {
    tensors.iter().filter(|t| t.kind == TensorKind::Linear).filter_map(move |t| {
        let module = t.name.strip_suffix(".weight")?;
        is_targeted(module, targets).then_some((module, t.shape[1], t.shape[0]))
    })
}

/// Trainable parameters of rank-`r` adapters on the targeted linears: `r * (in + out)` each.
pub fn lora_param_count(tensors: &[TensorSpec], targets: &[String], r: usize) -> usize {
    targeted_linears(tensors, targets).map(|(_, i, o)| r * (i + o)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::{text_tensors, vision_config, vision_tensors};
    use crate::model::TextConfig;
    use std::path::Path;

    fn seven() -> Vec<String> {
        ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn suffix_rules_follow_peft() {
        let t = seven();
        assert!(is_targeted("model.layers.0.self_attn.q_proj", &t));
        assert!(is_targeted("visual.blocks.31.mlp.gate_proj", &t));
        assert!(!is_targeted("visual.blocks.0.attn.proj", &t), "`proj` is not `o_proj`");
        assert!(!is_targeted("model.layers.0.self_attn.xq_proj", &t), "suffix must start at a dot");
        assert!(is_targeted("lm_head", &["lm_head".to_string()]));
    }

    #[test]
    fn qwen25_vl_7b_rank_64_on_seven_projections() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/configs/qwen2.5-vl-7b-instruct.json");
        let text = text_tensors(&TextConfig::from_file(&path).unwrap());
        let vision = vision_tensors(&vision_config(&path).unwrap().unwrap());
        assert_eq!(lora_param_count(&text, &seven(), 64), 161_480_704);
        assert_eq!(lora_param_count(&vision, &seven(), 64), 28_876_800);
        let all: Vec<TensorSpec> = text.into_iter().chain(vision).collect();
        assert_eq!(lora_param_count(&all, &seven(), 64), 190_357_504);
    }
}
