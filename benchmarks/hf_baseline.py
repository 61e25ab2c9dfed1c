"""The baseline system: transformers' `DeepseekV4ForCausalLM.generate` with static batches.

Requests are taken in order in batches of `batch_size`, left-padded to the batch's longest
prompt with an attention mask, and decoded greedily for the batch's largest output budget
(what static batching does: short requests wait for the longest one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.loader import checkpoint_shards, load_model
from ..model.make_tiny import transformers_tensors
from ..model.threads import use_threads
from ..runtime.tokenizer import SPECIAL_IDS

TRANSFORMERS_MARKER = "model.embed_tokens.weight"


def transformers_checkpoint(model_path: str | Path, workdir: str | Path) -> Path:
    """`model_path` itself if it is in the transformers layout; otherwise a copy in that
    layout under `workdir`, written from the weights Banyan loads (values are exact: the
    official format only holds bf16-representable values)."""
    model_path = Path(model_path)
    if TRANSFORMERS_MARKER in checkpoint_shards(model_path):
        return model_path
    model = load_model(model_path, dtype=torch.float32, progress=False)
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = transformers_tensors(model.state_dict(), model.cfg)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    cfg = model.cfg.replace(expert_dtype=None, quantization=None)
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    return out


def load_hf_model(model_path: str | Path, workdir: str | Path, dtype: torch.dtype = torch.float32,
                  device: str = "cpu"):
    """transformers' model of `model_path`, with this process's intra-op threads set as Banyan's
    runner sets them for small steps (`model.threads`: one for a narrow model)."""
    from transformers import DeepseekV4ForCausalLM

    path = transformers_checkpoint(model_path, workdir)
    model = DeepseekV4ForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    use_threads(model.config.hidden_size, attended=0)
    return model


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, T]` input ids padded on the left, and the attention mask (1 on real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


@torch.inference_mode()
def hf_generate(model, prompts: list[list[int]], output_lens: list[int], batch_size: int = 8) -> dict:
    """Run every prompt; wall time and token counts (`computed_prompt_tokens` includes padding)."""
    pad = SPECIAL_IDS["pad"]
    computed = generated = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[i:i + batch_size], pad)
        new = max(output_lens[i:i + batch_size])
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=False,
                             max_new_tokens=new, min_new_tokens=new, pad_token_id=pad)
        computed += ids.numel()
        generated += out[:, ids.shape[1]:].numel()
    return {"seconds": time.perf_counter() - start, "computed_prompt_tokens": computed,
            "generated_tokens": generated}
