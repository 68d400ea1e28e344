"""A chat server that keeps each conversation's state between requests and across a restart: `python
examples/chat_sessions.py`.

The model is a tiny Qwen3-Next-style hybrid (gated DeltaNet layers beside an attention layer) with random
weights, so nothing is downloaded. Each conversation's state after its messages is saved as one file per
session id; a restarted server (a model loaded afresh from its folder) answers the next message of every
conversation from that file, without reading the conversation again, and checks the answer's logits
against one uninterrupted run over the whole conversation.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import statefmt
from statefmt.adapters import transformers as hf

SESSIONS = ("ada", "grace", "linus")


def model_config() -> transformers.Qwen3NextConfig:
    return transformers.Qwen3NextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
        linear_value_head_dim=8, linear_conv_kernel_dim=4, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=16, shared_expert_intermediate_size=16)


def conversation(session: str, length: int) -> torch.Tensor:
    seed = SESSIONS.index(session)
    return torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def main(folder: Path) -> dict[str, float]:
    torch.manual_seed(0)
    transformers.Qwen3NextForCausalLM(model_config()).eval().save_pretrained(folder / "model")
    model = transformers.Qwen3NextForCausalLM.from_pretrained(folder / "model").eval()
    (folder / "sessions").mkdir()
    history = {session: conversation(session, 200 + 40 * i) for i, session in enumerate(SESSIONS)}
    started = time.perf_counter()
    for session, tokens in history.items():  # the server's first day: each conversation read once
        out = model(tokens, use_cache=True)
        statefmt.save(hf.export(model, out, tokens=tokens), folder / "sessions" / f"{session}.statefmt")
    read_seconds = time.perf_counter() - started

    restarted = transformers.Qwen3NextForCausalLM.from_pretrained(folder / "model").eval()
    resumed_error = fresh_error = 0.0
    restore_seconds = 0.0
    for session, tokens in history.items():  # the next message of each conversation, after the restart
        message = conversation(session, tokens.shape[1] + 6)[:, -6:]
        started = time.perf_counter()
        cache = hf.initial_state(statefmt.load(folder / "sessions" / f"{session}.statefmt"), restarted)
        restore_seconds += time.perf_counter() - started
        answer = restarted(message, past_key_values=cache, use_cache=True).logits
        whole = model(torch.cat([tokens, message], 1)).logits[:, -6:]
        forgot = restarted(message).logits
        resumed_error = max(resumed_error, float((answer - whole).abs().max()))
        fresh_error = max(fresh_error, float((forgot - whole).abs().max()))
    return {"sessions_resumed": len(history), "resumed_error": resumed_error, "fresh_error": fresh_error,
            "read_seconds": read_seconds, "restore_seconds": restore_seconds}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        result = main(Path(scratch))
    print(f"{result['sessions_resumed']} conversations resumed after a restart; largest logit difference from an "
          f"uninterrupted run {result['resumed_error']:.1e} (a server that forgot them: {result['fresh_error']:.1e}); "
          f"read once in {result['read_seconds']:.2f} s, restored in {1000 * result['restore_seconds']:.0f} ms")
    sys.exit(0 if result["resumed_error"] < 1e-5 else 1)
