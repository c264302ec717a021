"""atheris harness: the public array entry points of a loaded model (stories260K):
``_C.Model.forward`` with arbitrary shapes, dtypes, strides and token / role / segment values,
and ``Model.logits`` / ``Model.hidden_states`` with arbitrary Python-side input."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import atheris  # noqa: E402
import numpy as np  # noqa: E402
from _common import checked, main  # noqa: E402

import magnet  # noqa: E402

MODEL = magnet.Model.from_pretrained("stories260K")
DTYPES = [np.int32, np.uint8, np.int64, np.int8, np.uint32, np.float32, np.float64, np.bool_,
          np.int16, object]


def array(fdp: atheris.FuzzedDataProvider, shape: tuple[int, ...]) -> np.ndarray:
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    n = int(np.prod(shape)) if shape else 1
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:  # small values: valid ids, roles 0/1, segments -1..2
        vals = [fdp.ConsumeIntInRange(-1, 3) for _ in range(n)]
    elif mode == 1:
        vals = [fdp.ConsumeIntInRange(0, MODEL.config.vocab_size - 1) for _ in range(n)]
    else:
        vals = [fdp.ConsumeIntInRange(-(2**31), 2**31 - 1) for _ in range(n)]
    try:
        arr = np.array(vals, dtype=np.int64).astype(dtype).reshape(shape)
    except (ValueError, OverflowError):
        arr = np.zeros(shape, dtype=np.int32)
    if fdp.ConsumeBool() and arr.ndim >= 1 and arr.shape[-1] > 1:
        arr = arr[..., ::2]  # non-contiguous
    if fdp.ConsumeBool() and arr.ndim == 2:
        arr = arr.T
    return arr


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ndim = fdp.ConsumeIntInRange(0, 3)
    shape = tuple(fdp.ConsumeIntInRange(0, 6) for _ in range(ndim))
    ids = array(fdp, shape)
    roles = array(fdp, shape) if fdp.ConsumeBool() else None
    segs = array(fdp, shape) if fdp.ConsumeBool() else None
    which = fdp.ConsumeIntInRange(0, 2)
    if which == 0:
        hidden, logits = fdp.ConsumeBool(), fdp.ConsumeBool()
        r = roles if roles is not None else np.ones(shape, np.uint8)
        s = segs if segs is not None else np.zeros(shape, np.int32)
        checked(lambda: MODEL._c.forward(ids, r, s, hidden, logits))
    elif which == 1:
        checked(lambda: MODEL.logits(ids, roles=roles, segments=segs))
    else:
        checked(lambda: MODEL.hidden_states(ids.tolist() if fdp.ConsumeBool() else ids,
                                            roles=roles, segments=segs))


if __name__ == "__main__":
    main(test_one_input, "forward")
