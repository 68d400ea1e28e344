"""The hand-off matrix's models: one tiny random model per family, written once to a folder, and each
implementation that runs it, with the same weights (each loads them its own way, as a user would).

An implementation says how it builds the model from the folder, how it runs tokens from the start
(`prefill`: logits and its own state) and how it continues from its own state (`resume`), and
which adapter speaks its layout. Run as a script, it is the other process of a hand-off:

    python handoff_models.py BASE FAMILY...

continues each family's saved states (`BASE/<family>-work`, weights in `BASE/<family>`) in each
other implementation, from each state and from it zeroed, and writes both continuations' logits.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPLIT = 5  # tokens before the hand-off
os.environ.setdefault("RWKV_JIT_ON", "0")  # BlinkDL's runtime scripts its kernels by default: slower to start


@dataclass(frozen=True)
class Implementation:
    adapter: str  # the module under statefmt.adapters
    build: Callable[[Path], Any]
    prefill: Callable[[Any, np.ndarray], tuple[np.ndarray, Any]]  # (model, tokens) -> (logits, state)
    resume: Callable[[Any, Any, np.ndarray, int], np.ndarray]  # (model, state, tokens, start) -> logits
    options: Callable[[int], dict[str, Any]] = lambda total: {}  # initial_state's own options

    def module(self):
        return importlib.import_module(f"statefmt.adapters.{self.adapter}")


@dataclass(frozen=True)
class Family:
    write: Callable[[Path], None]
    tokens: np.ndarray  # (batch, total): the first SPLIT go before the hand-off
    implementations: dict[str, Implementation]


# Griffin: DeepMind's PyTorch model and Hugging Face's RecurrentGemma. They compute the same
# function only inside the local-attention window (past it their windows differ by one position),
# so the sequence stays within it: WINDOW tokens in all.

GRIFFIN = {"vocab": 64, "width": 32, "heads": 4, "window": 12, "mlp": 48, "blocks": ("recurrent", "attention",
                                                                                    "recurrent")}


def _griffin_deepmind(folder: Path):
    import recurrentgemma.torch as rg
    import torch
    from recurrentgemma import common

    kinds = {"recurrent": common.TemporalBlockType.RECURRENT, "attention": common.TemporalBlockType.ATTENTION}
    config = common.GriffinConfig(
        vocab_size=GRIFFIN["vocab"], width=GRIFFIN["width"], mlp_expanded_width=GRIFFIN["mlp"],
        num_heads=GRIFFIN["heads"], lru_width=GRIFFIN["width"], attention_window_size=GRIFFIN["window"],
        embeddings_scale_by_sqrt_dim=True, logits_soft_cap=30.0, block_types=tuple(kinds[b] for b in GRIFFIN["blocks"]))
    model = rg.Griffin(config, dtype=torch.float32).eval()
    if (folder / "griffin.pt").exists():
        model.load_state_dict(torch.load(folder / "griffin.pt"))
    return model


def _griffin_write(folder: Path) -> None:
    import torch

    torch.manual_seed(0)
    model = _griffin_deepmind(folder)
    with torch.no_grad():
        for parameter in model.parameters():  # DeepMind initialises norms and biases to zero: stir them
            parameter.add_(torch.randn_like(parameter) * 0.1)
    torch.save(model.state_dict(), folder / "griffin.pt")


def _griffin_hf(folder: Path):
    """HF's RecurrentGemma with DeepMind's weights, renamed as HF's convert_recurrent_gemma_to_hf.py does."""
    import torch
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

    config = RecurrentGemmaConfig(
        vocab_size=GRIFFIN["vocab"], hidden_size=GRIFFIN["width"], intermediate_size=2 * GRIFFIN["mlp"],
        num_attention_heads=GRIFFIN["heads"], num_key_value_heads=1, lru_width=GRIFFIN["width"],
        attention_window_size=GRIFFIN["window"], num_hidden_layers=len(GRIFFIN["blocks"]),
        block_types=list(GRIFFIN["blocks"]), logits_soft_cap=30.0)
    model = RecurrentGemmaForCausalLM(config).eval()
    model.load_state_dict(_griffin_to_hf(torch.load(folder / "griffin.pt")))
    return model


_GRIFFIN_NAMES = {
    "temporal_pre_norm.scale": "temporal_pre_norm.weight", "channel_pre_norm.scale": "channel_pre_norm.weight",
    "mlp_block.ffw_down.weight": "mlp_block.down_proj.weight", "mlp_block.ffw_down.bias": "mlp_block.down_proj.bias",
    "recurrent_block.rg_lru.a_param": "temporal_block.rg_lru.recurrent_param",
    "recurrent_block.rg_lru.input_gate.w": "temporal_block.rg_lru.input_gate_weight",
    "recurrent_block.rg_lru.input_gate.b": "temporal_block.rg_lru.input_gate_bias",
    "recurrent_block.rg_lru.a_gate.w": "temporal_block.rg_lru.recurrent_gate_weight",
    "recurrent_block.rg_lru.a_gate.b": "temporal_block.rg_lru.recurrent_gate_bias",
    "recurrent_block.conv_1d.b": "temporal_block.conv_1d.bias",
    "attention_block.proj_q.weight": "temporal_block.q_proj.weight",
    "attention_block.proj_k.weight": "temporal_block.k_proj.weight",
    "attention_block.proj_v.weight": "temporal_block.v_proj.weight",
    "attention_block.proj_final.weight": "temporal_block.o_proj.weight",
    "attention_block.proj_final.bias": "temporal_block.o_proj.bias",
}


def _griffin_to_hf(weights: dict) -> dict:
    out = {"model.embed_tokens.weight": weights["embedder.input_embedding"], "model.final_norm.weight":
           weights["final_norm.scale"], "lm_head.weight": weights["embedder.input_embedding"]}
    for key, value in weights.items():
        if not key.startswith("blocks."):
            continue
        _, index, rest = key.split(".", 2)
        prefix = f"model.layers.{index}."
        if rest in _GRIFFIN_NAMES:
            out[prefix + _GRIFFIN_NAMES[rest]] = value
        elif rest.startswith("recurrent_block.linear_"):
            out[prefix + "temporal_block." + rest.split(".", 1)[1]] = value
        elif rest == "recurrent_block.conv_1d.w":  # (K, W) -> (W, 1, K), no flip: w[K-1] meets the newest input
            out[prefix + "temporal_block.conv_1d.weight"] = value.T[:, None, :]
        elif rest == "mlp_block.ffw_up.w":  # (2, D, F): gate and up, transposed against torch's Linear
            out[prefix + "mlp_block.gate_proj.weight"] = value[0].T
            out[prefix + "mlp_block.up_proj.weight"] = value[1].T
        elif rest == "mlp_block.ffw_up.b":
            out[prefix + "mlp_block.gate_proj.bias"] = value[0].reshape(-1)
            out[prefix + "mlp_block.up_proj.bias"] = value[1].reshape(-1)
        else:
            raise KeyError(key)
    return out


def _griffin_positions(start: int, tokens: np.ndarray):
    import torch

    return torch.arange(start, start + tokens.shape[1])[None].expand(tokens.shape[0], -1)


def _griffin_deepmind_prefill(model, tokens):
    import torch

    with torch.no_grad():
        logits, cache = model(torch.tensor(tokens), _griffin_positions(0, tokens))
    return logits.numpy(), cache


def _griffin_deepmind_resume(model, cache, tokens, start):
    """Token by token: Griffin's convolution continues from a cache one token at a time."""
    import torch

    out = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            step = tokens[:, t:t + 1]
            logits, cache = model(torch.tensor(step), _griffin_positions(start + t, step), cache)
            out.append(logits.numpy())
    return np.concatenate(out, axis=1)


# RWKV-4: Hugging Face's model and BlinkDL's runtime, reading the same weights under BlinkDL's names.

RWKV4 = {"vocab": 64, "width": 32, "layers": 2}


def _rwkv4_write(folder: Path) -> None:
    import torch
    from transformers import RwkvConfig, RwkvForCausalLM

    torch.manual_seed(0)
    config = RwkvConfig(vocab_size=RWKV4["vocab"], hidden_size=RWKV4["width"], num_hidden_layers=RWKV4["layers"],
                        attention_hidden_size=RWKV4["width"], intermediate_size=4 * RWKV4["width"], rescale_every=0,
                        context_length=64)
    model = RwkvForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(folder / "hf")
    renames = [("rwkv.", ""), ("embeddings.", "emb."), ("pre_ln", "ln0"), ("attention.", "att."),
               ("feed_forward.", "ffn."), ("time_mix_key", "time_mix_k"), ("time_mix_value", "time_mix_v"),
               ("time_mix_receptance", "time_mix_r")]
    blink = {}
    for key, value in model.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        blink[key] = value.detach().clone()
    torch.save(blink, folder / "rwkv4.pth")


def _rwkv4_runtime(folder: Path):
    from rwkv.model import RWKV

    return RWKV(str(folder / "rwkv4.pth"), strategy="cpu fp32", verbose=False)


def _rwkv4_runtime_prefill(model, tokens):
    logits, state = model.forward(tokens[0].tolist(), None, full_output=True)
    return logits.numpy()[None], state


def _rwkv4_runtime_resume(model, state, tokens, start):
    logits, _ = model.forward(tokens[0].tolist(), state, full_output=True)
    return logits.numpy()[None]


# Qwen3.5 (a gated DeltaNet hybrid): Hugging Face's PyTorch model and keras-hub's Keras model (the
# TensorFlow backend here), which loads the Hugging Face folder with its own converter.

QWEN35 = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "linear_num_key_heads": 2,
          "linear_num_value_heads": 2, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
          "linear_conv_kernel_dim": 4, "layer_types": ["linear_attention", "full_attention"],
          "tie_word_embeddings": False}


def _qwen35_write(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(0)
    model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**QWEN35))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folder / "hf")
    # keras-hub reads the multimodal checkpoint's layout: model type qwen3_5, the text model under language_model
    keras = folder / "keras"
    keras.mkdir()
    config = json.loads((folder / "hf" / "config.json").read_text())
    (keras / "config.json").write_text(json.dumps({**config, "model_type": "qwen3_5"}))
    weights = load_file(folder / "hf" / "model.safetensors")
    save_file({("model.language_model." + key[6:] if key.startswith("model.") else key): value
               for key, value in weights.items()}, keras / "model.safetensors", metadata={"format": "pt"})


def _qwen35_keras(folder: Path):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_hub

    backbone = keras_hub.models.Qwen3_5Backbone.from_preset(str(folder / "keras"))
    return keras_hub.models.Qwen3_5CausalLM(backbone=backbone, preprocessor=None)


def _qwen35_keras_prefill(model, tokens):
    from statefmt.adapters import keras_hub

    empty = keras_hub.initial_state(_empty_qwen35(model, tokens.shape[0]), model, max_length=tokens.shape[1])
    logits, _, cache = model.call_with_cache(tokens, *empty)
    return np.asarray(logits), (cache, tokens.shape[1])


def _empty_qwen35(model, batch):
    """A state that has seen no token: zero conv windows and recurrent states, no attention positions."""
    import statefmt
    from statefmt.adapters import keras_hub
    from statefmt.kinds import KINDS_2_1

    layers = []
    for layer in keras_hub.signature(model).layers:
        dims = {**layer.dims, "length": 0}
        shapes = {name: (batch, *(dims[axis] for axis in axes[1:])) for name, axes in KINDS_2_1[layer.kind].tensors}
        layers.append(statefmt.LayerState(layer.name, layer.kind, window=dims.get("window"),
                                          **{name: np.zeros(shape, "float32") for name, shape in shapes.items()}))
    return statefmt.StateSet(layers, metadata={"tokens": 0})


def _qwen35_keras_resume(model, cache_and_index, tokens, start):
    cache, index = cache_and_index
    logits, _, _ = model.call_with_cache(tokens, cache, index)
    return np.asarray(logits)


def _hf(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder / "hf").eval()


def _hf_prefill(model, tokens):
    """A forward with `use_cache=True`. RecurrentGemma returns no cache: it fills the one it is given."""
    import torch
    from transformers import DynamicCache

    given = {"past_key_values": DynamicCache(config=model.config)} if _griffin_like(model) else {}
    with torch.no_grad():
        out = model(torch.tensor(tokens), use_cache=True, **given)
    return out.logits.numpy(), given.get("past_key_values", out)


def _hf_resume(model, cache, tokens, start):
    """One forward from the cache; RecurrentGemma token by token (its prefill branch ignores a cached conv window)."""
    import torch

    from statefmt.adapters import transformers as adapter

    argument = adapter.cache_argument(model)
    with torch.no_grad():
        if not _griffin_like(model):
            return model(torch.tensor(tokens), use_cache=True, **{argument: cache}).logits.numpy()
        out = []
        for t in range(tokens.shape[1]):
            positions = torch.full((tokens.shape[0], 1), start + t)
            out.append(model(torch.tensor(tokens[:, t:t + 1]), position_ids=positions, use_cache=True,
                             past_key_values=cache).logits.numpy())
    return np.concatenate(out, axis=1)


def _griffin_like(model) -> bool:
    return model.config.model_type == "recurrent_gemma"


FAMILIES = {
    "griffin": Family(_griffin_write, np.random.default_rng(1).integers(0, GRIFFIN["vocab"], (2, GRIFFIN["window"])),
                      {"deepmind": Implementation("recurrentgemma", _griffin_deepmind, _griffin_deepmind_prefill,
                                                  _griffin_deepmind_resume),
                       "hf": Implementation("transformers", _griffin_hf, _hf_prefill, _hf_resume)}),
    "rwkv4": Family(_rwkv4_write, np.random.default_rng(2).integers(0, RWKV4["vocab"], (1, 12)),
                    {"rwkv": Implementation("rwkv", _rwkv4_runtime, _rwkv4_runtime_prefill, _rwkv4_runtime_resume),
                     "hf": Implementation("transformers", _hf, _hf_prefill, _hf_resume)}),
    "qwen35": Family(_qwen35_write, np.random.default_rng(3).integers(0, QWEN35["vocab_size"], (2, 12)),
                     {"keras_hub": Implementation("keras_hub", _qwen35_keras, _qwen35_keras_prefill,
                                                  _qwen35_keras_resume, lambda total: {"max_length": total}),
                      "hf": Implementation("transformers", _hf, _hf_prefill, _hf_resume)}),
}


def resume_elsewhere(family: str, folder: Path, work: Path) -> None:
    """For every state `work/<first>.statefmt` that another process saved: continue it in every other
    implementation (its weights in `folder`), from it and from it zeroed, into `work/<first>-<second>.npz`."""
    import statefmt

    entry = FAMILIES[family]
    tokens = np.load(work / "tokens.npy")
    for second, implementation in entry.implementations.items():
        model = implementation.build(folder)
        for first in entry.implementations:
            if first == second:
                continue
            states = statefmt.load(work / f"{first}.statefmt")
            zero = statefmt.StateSet([layer.with_arrays(**{key: np.zeros_like(layer[key]) for key in layer.state_names})
                                      for layer in states.layers], metadata=states.metadata)
            out = {}
            for label, start in (("handed", states), ("zero", zero)):
                native = implementation.module().initial_state(start, model, **implementation.options(tokens.shape[1]))
                out[label] = implementation.resume(model, native, tokens[:, SPLIT:], SPLIT)
            np.savez(work / f"{first}-{second}.npz", **out)


if __name__ == "__main__":
    base = Path(sys.argv[1])
    for family in sys.argv[2:]:
        resume_elsewhere(family, base / family, base / f"{family}-work")
