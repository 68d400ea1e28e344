"""Tiny random Hugging Face language models of each recurrent family that runs on a CPU, built from a config
(nothing downloaded), and the one way each continues from a cache: in one forward, or token by token."""

import torch
import transformers

VOCAB = 64

# family -> (config class, its tiny settings, model class, continues token by token)
FAMILIES = {
    "mamba2": ("Mamba2Config", dict(hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, head_dim=8,
                                    num_heads=8, n_groups=2, conv_kernel=4, chunk_size=8), "Mamba2ForCausalLM", False),
    "qwen3_next": ("Qwen3NextConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                           linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
                                           linear_value_head_dim=8, linear_conv_kernel_dim=4, num_experts=4,
                                           num_experts_per_tok=2, moe_intermediate_size=16,
                                           shared_expert_intermediate_size=16), "Qwen3NextForCausalLM", False),
    # HF's Mamba-1 slow path (no mamba_ssm) drops the cached ssm state when it continues with more than one
    # token at once: one token at a time is what works (and what generate does)
    "mamba": ("MambaConfig", dict(hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4),
              "MambaForCausalLM", True),
    "rwkv": ("RwkvConfig", dict(hidden_size=32, num_hidden_layers=2, attention_hidden_size=32, intermediate_size=64,
                                context_length=64, rescale_every=0), "RwkvForCausalLM", False),
    # xLSTM's q/k width is rounded up to a multiple of 64 in its cache: hidden 128 keeps both in step
    "xlstm": ("xLSTMConfig", dict(hidden_size=128, num_hidden_layers=2, num_heads=2), "xLSTMForCausalLM", False),
    # Griffin: two RG-LRU blocks and a local-attention block of window 8 (the split at 10 continues past it). HF's
    # multi-token forward ignores a cached conv state: one token at a time is what works
    "recurrent_gemma": ("RecurrentGemmaConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                     num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                                     lru_width=32, attention_window_size=8, conv1d_width=4),
                        "RecurrentGemmaForCausalLM", True),
}


def config(family, **changes):
    name, settings, _, _ = FAMILIES[family]
    return getattr(transformers, name)(vocab_size=VOCAB, **{**settings, **changes})


def build(family, seed=0, **changes):
    torch.manual_seed(seed)
    return getattr(transformers, FAMILIES[family][2])(config(family, **changes)).eval()


def tokens(batch=2, length=16, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def prefill(model, family, ids):
    """What a forward over `ids` leaves for `export`: its output, or (RecurrentGemma, whose output carries no
    cache) the `past_key_values` it was given."""
    if family != "recurrent_gemma":
        return model(ids, use_cache=True)
    cache = transformers.DynamicCache(config=model.config)
    model(ids, past_key_values=cache, use_cache=True)
    return cache


@torch.no_grad()
def continue_from(model, family, argument, cache, ids):
    """The logits of `ids` continuing from `cache` (None: from a fresh state)."""
    if cache is None:
        return model(ids, use_cache=True).logits
    if not FAMILIES[family][3]:
        return model(ids, **{argument: cache}, use_cache=True).logits
    logits = []
    for t in range(ids.shape[1]):
        out = model(ids[:, t:t + 1], **{argument: cache}, use_cache=True)
        logits.append(out.logits)
        cache = getattr(out, argument, None) or cache  # RecurrentGemma's output carries none: it updates its own
    return torch.cat(logits, 1)
