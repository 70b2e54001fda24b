"""ugen: one decoder-only transformer that reads and writes text and discrete image tokens."""

__version__ = "0.1.0"


def load(directory, device="auto", dtype=None):
    """Load a ugen model directory (bf16 on CUDA, fp32 on the CPU, unless `dtype` says otherwise);
    see `ugen.api.UGen` for what it can do."""
    from ugen.api import load as _load  # imported lazily: `import ugen` stays light

    return _load(directory, device, dtype)
