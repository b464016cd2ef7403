"""F32 and F16 GGUF files of the model the engine runs, for llama.cpp side by side.

``kvbatch fetch-model`` turns a packaged Q4_1 GGUF into safetensors by de-quantizing it. Here
the same de-quantization (the ``gguf`` package's, which transformers uses too) writes the
tensors back as F32 or F16 GGUF, with the original file's metadata and tokenizer: llama.cpp
then runs the very weights the engine loads, in llama.cpp's own tensor layout. As llama.cpp's
converter does, 1-D tensors (norm weights) stay F32 in the F16 file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import dequantize

FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16}


def export_gguf(source: Path, dest: Path, precision: str) -> Path:
    """Write ``source``'s tensors de-quantized to ``precision`` (``f32`` or ``f16``)."""
    if precision not in FILE_TYPES:
        raise ValueError(f"precision must be one of {sorted(FILE_TYPES)}, got {precision!r}")
    reader = GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    writer = GGUFWriter(dest, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        value: Any = field.contents()
        main = field.types[0]
        sub = field.types[-1] if main is GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, main, sub_type=sub)
    writer.add_file_type(FILE_TYPES[precision])
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml order -> numpy order
        values = values.reshape(shape)
        if precision == "f16" and values.ndim > 1:
            writer.add_tensor(tensor.name, values.astype(np.float16))
        else:
            writer.add_tensor(tensor.name, values, raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest
