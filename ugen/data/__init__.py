"""Data for every stage: where rows come from (`sources`) and the on-disk code cache (`cache`)."""

from ugen.data.sources import (
    DATA_FLAGS,
    SPLITS,
    Source,
    add_data_args,
    add_source_args,
    data_image_size,
    data_of_model,
    default_image_size,
    load_examples,
    open_source,
    open_split,
    square_rgb,
)
from ugen.example import Example, Texts

__all__ = ["DATA_FLAGS", "SPLITS", "Example", "Source", "Texts", "add_data_args", "add_source_args", "data_image_size",
           "data_of_model", "default_image_size", "load_examples", "open_source", "open_split", "square_rgb"]
