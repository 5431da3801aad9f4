"""The quantkeys CLI prints keys, schemes and parsed configs; bad configs exit 2 with the reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

from quantkeys.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_keys(capsys):
    assert main(["keys"]) == 0
    assert re.search(r"^kFp8Static128BlockSym +fp8e4m3 static 128x128 sym$", capsys.readouterr().out, re.M)


def test_schemes(capsys):
    assert main(["schemes"]) == 0
    out = capsys.readouterr().out
    assert "fp8_block:" in out and "xpu   -> xpu > triton > reference" in out


def test_parse(capsys):
    assert main(["parse", str(FIXTURES / "qwen3-30b-a3b-gptq-int4.json")]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.experts.0.gate_proj: weight int4 static 1x128 sym (kInt4Static)" in out
    assert "model.layers.1.mlp.gate: not quantized" in out


def test_parse_error(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 3}}))
    assert main(["parse", str(bad)]) == 2
    assert "bits=3" in capsys.readouterr().err
