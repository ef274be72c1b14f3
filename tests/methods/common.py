"""Hand-made batches and a forward helper shared by the method tests."""
from __future__ import annotations

import torch

VOCAB = 100


def make_batch(seed: int = 0, b: int = 4, s: int = 7, t: int = 6, pad: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded src+eos / bos+tgt / tgt+eos with random lengths (pad 0, bos 2, eos 3); row 0 is full.

    ``pad`` shortens the random lengths of the other rows by that much more, so they always hold padding.
    """
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(b, s, dtype=torch.long)
    dec = torch.zeros(b, t, dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    for i in range(b):
        ls = s - 1 if i == 0 else int(torch.randint(2, s - pad, (1,), generator=g))
        lt = t - 1 if i == 0 else int(torch.randint(1, t - 1 - pad, (1,), generator=g))
        src[i, :ls] = torch.randint(4, VOCAB, (ls,), generator=g)
        src[i, ls] = 3
        y = torch.randint(4, VOCAB, (lt,), generator=g)
        dec[i, 0], dec[i, 1:lt + 1] = 2, y
        labels[i, :lt], labels[i, lt] = y, 3
    return {"input_ids": src, "attention_mask": src.ne(0).long(), "decoder_input_ids": dec,
            "decoder_attention_mask": labels.ne(-100).long(), "labels": labels, "ntokens": labels.ne(-100).sum()}


def forward(model, batch, **outputs):
    """The model on a batch; ``outputs`` e.g. ``output_attentions=True``."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 decoder_input_ids=batch["decoder_input_ids"], decoder_attention_mask=batch["decoder_attention_mask"],
                 **outputs)
