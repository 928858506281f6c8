"""The example-by-example construction of `tspin_kit.logprobs.PackedExamples` (its first version), kept as the
reference the vectorised one is tested against: plain loops, one example and one role at a time."""

from __future__ import annotations

import numpy as np


def reference_pack(prompts: list[list[int]], roles: list[list[list[int]]], pad_id: int) -> dict[str, np.ndarray]:
    n, k = len(prompts), len(roles)
    longest = max((len(r[i]) for r in roles for i in range(n)), default=1) or 1
    lengths, ids, pos, seg = [], [], [], []
    src = np.zeros((n, k, longest), dtype=np.int64)
    targets = np.full((n, k, longest), pad_id, dtype=np.int64)
    mask = np.zeros((n, k, longest), dtype=bool)
    for i, p in enumerate(prompts):
        m0 = len(p)
        row_ids, row_pos, row_seg = list(p), list(range(m0)), [0] * m0
        start_of: dict = {}
        for role, rows in enumerate(roles):
            r = tuple(rows[i])
            if r not in start_of:
                start_of[r] = len(row_ids)
                row_ids += r
                row_pos += range(m0, m0 + len(r))
                row_seg += [len(start_of)] * len(r)
            start, m = start_of[r], len(r)
            if m:
                src[i, role, :m] = [max(m0 - 1, 0), *range(start, start + m - 1)]
                targets[i, role, :m] = r
                mask[i, role, :m] = True
                mask[i, role, 0] = m0 > 0
        lengths.append(len(row_ids))
        ids.append(row_ids)
        pos.append(row_pos)
        seg.append(row_seg)
    width = max(lengths, default=1)

    def pad(rows, value):
        return np.array([r + [value] * (width - len(r)) for r in rows], dtype=np.int64).reshape(n, width)

    counts = np.array([[len(r[i]) for r in roles] for i in range(n)], dtype=np.float32).reshape(n, k)
    return dict(
        input_ids=pad(ids, pad_id),
        position_ids=pad(pos, 0),
        segments=pad(seg, -1),
        lengths=np.array(lengths, dtype=np.int64),
        src=src,
        targets=targets,
        mask=mask,
        token_counts=counts,
    )
