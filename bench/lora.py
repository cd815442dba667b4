"""LoRA through PEFT: one LoRA adapter per task, named "task<t>", injected into the backbone with
PEFT's functional API (`inject_adapter_in_model`, its add_adapter for models that keep their own
class, and `set_adapter`), so the backbone stays the harness's module and its state dict carries
the adapters (checkpoints and resume need nothing else).

Targets: the attention projections named by `roles` ("q", "k", "v") in every block, found by name
inside `backbone.layers` (`query`/`key`/`value` of BERT and ViLT, `q_proj`/`k_proj`/`v_proj` of
transformers' CLIP). open_clip's attention is one fused `nn.MultiheadAttention` whose q/k/v are
slices of one `in_proj_weight` and whose out_proj is not called as a module; PEFT's LoRA for it
merges the delta into those frozen weights before every forward and subtracts it after, which
replaces the frozen parameters and leaves rounding residue in them (so a frozen backbone would not
stay bit-identical). There the LoRA targets the FFN's two dense layers (`mlp.c_fc`, `mlp.c_proj`),
plain `nn.Linear`s that PEFT wraps as everywhere else.
"""
import warnings

from torch import nn

from bench.errors import BenchError

ROLES = {"q": ("query", "q_proj"), "k": ("key", "k_proj"), "v": ("value", "v_proj")}
FUSED_ATTENTION_FALLBACK = ("mlp.c_fc", "mlp.c_proj")


def parse_roles(roles: str) -> tuple[str, ...]:
    """"q,v" -> ("q", "v")."""
    return tuple(r.strip() for r in roles.split(",") if r.strip())


def target_names(backbone: nn.Module, roles: tuple[str, ...]) -> list[str]:
    """Full module names (in `backbone`) of the linear layers LoRA adapts, block by block."""
    full = {id(m): n for n, m in backbone.named_modules()}
    wanted = {name for r in roles for name in ROLES[r]}
    out = []
    for layer in backbone.layers:
        found = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in wanted]
        if not found and any(isinstance(m, nn.MultiheadAttention) for m in layer.modules()):
            found = list(FUSED_ATTENTION_FALLBACK)
        if not found:
            raise BenchError(f"LoRA: no {'/'.join(sorted(wanted))} projection in {type(layer).__name__}")
        out += [f"{full[id(layer)]}.{n}" for n in found]
    return out


class TaskLoRAs:
    """One PEFT LoRA per task on `backbone` (frozen first). `layers` are PEFT's LoRA-wrapped linears,
    in model order; `activate` chooses which tasks' LoRAs run (summed, as PEFT sums active adapters)."""

    def __init__(self, backbone: nn.Module, n_tasks: int, roles: tuple[str, ...], r: int, alpha: float):
        from peft import LoraConfig
        from peft.functional import inject_adapter_in_model
        from peft.tuners.lora import LoraLayer
        self.backbone = backbone.freeze()
        self.names = [f"task{t}" for t in range(n_tasks)]
        # no LoRA dropout: the backbone runs without dropout too (bench/backbones/embedded.py)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_names(backbone, roles))
        with warnings.catch_warnings():  # PEFT warns that a second adapter joins the first: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            for name in self.names:
                inject_adapter_in_model(config, backbone, adapter_name=name)
        self.layers = [m for m in backbone.modules() if isinstance(m, LoraLayer)]
        self.activate([0])  # PEFT leaves the last injected adapter active and trainable

    def activate(self, tasks) -> None:
        """Run the LoRAs of `tasks` (PEFT's set_adapter), all frozen: a method unfreezes what it trains."""
        from peft.functional import set_adapter
        set_adapter(self.backbone, [self.names[t] for t in tasks], inference_mode=True)

    def A(self, t: int) -> list[nn.Parameter]:
        """Task t's down-projections, [r, d_in] per layer."""
        return [layer.lora_A[self.names[t]].weight for layer in self.layers]

    def B(self, t: int) -> list[nn.Parameter]:
        """Task t's up-projections, [d_out, r] per layer (zero-initialised by PEFT)."""
        return [layer.lora_B[self.names[t]].weight for layer in self.layers]

    def modules(self, t: int) -> list[nn.Module]:
        return [m for layer in self.layers for m in (layer.lora_A[self.names[t]], layer.lora_B[self.names[t]])]

    def n_params(self) -> int:
        return sum(p.numel() for t in range(len(self.names)) for m in self.modules(t) for p in m.parameters())
