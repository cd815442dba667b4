"""Method families, for colouring figures and grouping the results page: a method class may
declare `family = "..."`; the harness's own methods are listed here so that no method file needs
an edit for a plotting concern. Anything else is "other"."""
FAMILIES = {  # family -> methods, in the order legends list them
    "reference": ("single_task", "multitask"),
    "fine-tuning": ("finetune", "freeze_bottom_k", "frozen"),
    "regularisation": ("ewc", "lwf"),
    "replay": ("er", "derpp", "er_ace", "agem"),
    "adapters": ("adapter", "pfeiffer", "adapter_i2i_budget", "moe_adapters"),
    "adapter composition": ("adapter_fusion", "i2i", "i2i_light", "scalearn", "scalearn_uniform", "scalearn_pp",
                            "scalearn_uniform_pp", "atlas"),
    "prompts": ("l2p", "dualprompt", "coda_prompt"),
    "LoRA": ("lora", "olora", "inflora"),
}
ORDER = list(FAMILIES) + ["other"]
_BY_METHOD = {m: family for family, methods in FAMILIES.items() for m in methods}


def family_of(method: str) -> str:
    from bench.registry import METHODS
    # a run of a method no longer registered (an uninstalled plugin) still has a family: "other"
    declared = getattr(METHODS.get(method), "family", None) if method in METHODS else None
    return declared or _BY_METHOD.get(method, "other")
