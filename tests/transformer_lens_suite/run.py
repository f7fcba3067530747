"""Run TransformerLens's own tests against lens: the measure of issue 14.

TransformerLens's tests are its specification; they are not copied into this repository. This
script takes them at run time from a TransformerLens checkout (--repo, e.g. a clone of
github.com/TransformerLensOrg/TransformerLens at the 3.9 release), copies the files of the kinds
listed in FILES into a scratch folder and runs them twice, offline:

  reference  unchanged, against the installed transformer-lens 3.9: a test that fails here needs the
             HF hub or tests something 3.9 does not have, and is left out of the measure;
  lens       with `transformer_lens` replaced by `lens` in their text (imports, dotted names).

It prints passed / counted / total per file and overall, and writes every test's outcome as JSON
(--out). references/porting.md lists the tests that do not make sense for lens and why.

    python tests/transformer_lens_suite/run.py --repo /path/to/TransformerLens --out /tmp/tl_suite.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

SUBSTITUTE = True  # from_pretrained builds a small random model (see substitute.py); run.py --no-substitute turns it off
ROOT = Path(os.environ.get("LENS_ROOT", Path(__file__).resolve().parents[2]))  # the lens checkout to measure

# The kinds issue 14 names: FactoredMatrix, hook points, hooks, ActivationCache, patching, utils,
# tokenization, start/stop at layer, attention masks, left padding, KV cache, generate, head
# detector, SVD interpreter, weight processing (and the config-built models they run on).
FILES = [
    "tests/unit/factored_matrix/test_constructor.py",
    "tests/unit/factored_matrix/test_get_item.py",
    "tests/unit/factored_matrix/test_multiply_by_factored_matrix.py",
    "tests/unit/factored_matrix/test_multiply_by_matrix.py",
    "tests/unit/factored_matrix/test_multiply_by_scalar.py",
    "tests/unit/factored_matrix/test_multiply_by_tensor_like.py",
    "tests/unit/factored_matrix/test_multiply_by_vector.py",
    "tests/unit/factored_matrix/test_properties.py",
    "tests/unit/test_hook_points.py",
    "tests/integration/test_hooks.py",
    "tests/acceptance/test_activation_cache.py",
    "tests/unit/utilities/test_cache.py",
    "tests/integration/test_cache_pos_slice.py",
    "tests/integration/test_cache_hook_names.py",
    "tests/unit/test_patching.py",
    "tests/unit/test_utils.py",
    "tests/integration/test_utils_tokens.py",
    "tests/integration/test_tokenization_methods.py",
    "tests/integration/test_prepend_bos.py",
    "tests/integration/test_start_at_layer.py",
    "tests/integration/test_stop_at_layer.py",
    "tests/integration/test_attention_mask.py",
    "tests/integration/test_left_padding.py",
    "tests/integration/test_kv_cache.py",
    "tests/unit/test_key_value_cache_entry.py",
    "tests/acceptance/test_generate_batch.py",
    "tests/integration/test_generation_compatibility.py",
    "tests/integration/test_head_detector.py",
    "tests/unit/test_svd_interpreter.py",
    "tests/unit/test_weight_processing.py",
    "tests/integration/test_weight_processing_integration.py",
    "tests/integration/test_fold_layer_integration.py",
    "tests/integration/test_grouped_query_attention.py",
    "tests/integration/test_d_vocab.py",
    "tests/unit/test_hooked_transformer_config.py",
    "tests/unit/test_use_attn_result.py",
    "tests/unit/test_split_qkv.py",
    "tests/integration/test_cross_entropy_loss.py",
    "tests/integration/test_main_demo_pattern_hooks.py",
    "tests/acceptance/test_hooked_transformer.py",
    "tests/acceptance/test_hook_tokens.py",
]
# Tests that do not make sense for lens, by a pattern of their id, with the reason (references/porting.md
# lists them). Internals: TransformerLens modules lens has no counterpart of, by design.
NOT_SENSIBLE = {
    r"unit/test_weight_processing\.py|test_weight_processing_integration\.py":
        "TransformerLens's ProcessWeights on state dicts (internals); lens's processing is checked against "
        "TransformerLens's outputs in test_transformer_lens_parity.py",
    r"utilities/test_cache\.py": "TransformerLens's private helper utilities.cache.get_pos_offset",
    r"test_key_value_cache_entry\.py": "TransformerLens's per-layer KV cache entry class (internals)",
    r"test_split_qkv\.py|test_use_attn_result\.py|test_grouped_query_attention\.py":
        "they build TransformerLens's components.Attention / GroupedQueryAttention directly (internals)",
    r"test_hooked_transformer_config\.py": "TransformerLens's TransformerLensConfig base class (internals)",
    r"test_(start|stop)_at_layer\.py::.*(test_run_with_hooks|test_manual_hooks)":
        "they expect hooks outside the layer range to be ignored silently; lens raises HookWouldNotFireError",
    r"test_hooks\.py::.*test_conditional_hooks":
        "it expects adding a hook on hook_result etc. without set_use_* to fail; lens computes on-request hooks "
        "whenever they are hooked",
    r"test_stop_at_layer\.py::.*test_no_stop_logit_output":
        "bitwise equality of a cached and an uncached forward; lens's uncached forward takes the fused "
        "SDPA / layer_norm path (equal within 1e-6)",
    r"test_hook_points\.py::.*(enable_reshape|reshape_functionality|test_add_hook_prepend|invalid_direction)":
        "TransformerLens's hook-conversion machinery, mocked torch hook handles, or beartype's exception type",
    r"test_svd_interpreter\.py::.*invalid_vector_type": "beartype's exception type",
    r"results_including_remainder": "layer=0 with incl_remainder: TransformerLens's remainder is then the *last* "
        "layer's resid_post (resid_post[layer - 1] with layer - 1 = -1); lens gives the residual entering layer 0",
    r"skips_dmodel_materialization": "they measure TransformerLens's intermediate tensor sizes (internals)",
    r"test_V_and_Vh_alias_match": "it expects Vh to be deprecated; lens keeps Vh as a name of its own",
    r"test_generation_compatibility\.py": "the file imports TransformerLens's TransformerBridge (lens has no "
        "bridge), so none of its tests can be collected; lens's generation is tested in tests/test_generation.py",
}
SUPPORT = ["tests/__init__.py", "tests/conftest.py", "tests/integration/__init__.py", "tests/unit/tools/__init__.py",
           "tests/mocks/__init__.py", "tests/mocks/models.py"]


def to_lens(text: str) -> str:
    """The test's text with TransformerLens's package name replaced by lens's."""
    return re.sub(r"\btransformer_lens\b", "lens", text)


def stage(repo: Path, files: list[str], dest: Path, lens: bool) -> None:
    """Copy the test files (their text moved to lens when `lens`) and, unchanged, the support files
    (conftest: TransformerLens's test infrastructure, not what is tested)."""
    for rel in SUPPORT + files:
        src = repo / rel
        if not src.exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        text = src.read_text()
        target.write_text(to_lens(text) if lens and rel in files else text)
    for folder in {p.parent for p in dest.rglob("*.py")}:  # packages, so same-named test files coexist
        (folder / "__init__.py").touch()


def run(dest: Path, files: list[str], lens: bool, timeout: int) -> dict[str, str]:
    """{test id: passed | failed | error | skipped}."""
    report = dest / "report.xml"
    here = Path(__file__).resolve().parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               SUITE_PACKAGE="lens" if lens else "transformer_lens",
               PYTHONPATH=os.pathsep.join([*([str(ROOT)] if lens else []), str(dest), str(here), str(here.parents[1])]))
    plugin = ["-p", "substitute"] if SUBSTITUTE else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, "--rootdir", str(dest),
           "--continue-on-collection-errors",
           f"--junitxml={report}", "-o", "addopts=", "-o", "junit_family=xunit1", *files]
    subprocess.run(cmd, cwd=dest, env=env, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        test_id = f"{case.get('file')}::{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[test_id] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                             else "skipped" if "skipped" in kinds else "passed")
    return outcomes


def not_sensible(test_id: str) -> str | None:
    """Why a test does not make sense for lens, or None."""
    return next((why for pattern, why in NOT_SENSIBLE.items() if re.search(pattern, test_id)), None)


def per_file(outcomes: dict[str, dict[str, str]]) -> dict[str, list[int]]:
    """file → [lens passes, sensible (passes on TransformerLens, makes sense for lens), counted, collected]."""
    table: dict[str, list[int]] = {}
    for test_id, o in outcomes.items():
        row = table.setdefault(test_id.split("::")[0], [0, 0, 0, 0])
        row[3] += 1
        if o["reference"] == "passed":
            row[2] += 1
            if not_sensible(test_id) is None:
                row[1] += 1
                row[0] += o["lens"] == "passed"
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="a TransformerLens checkout")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tl_suite.json")
    parser.add_argument("--timeout", type=int, default=3000)
    parser.add_argument("--reference-from", type=Path, help="reuse the reference outcomes of an earlier --out")
    parser.add_argument("--no-substitute", action="store_true", help="leave from_pretrained as it is (offline, "
                        "every test that loads a hub model then fails on both sides)")
    parser.add_argument("files", nargs="*", help="a subset of FILES")
    args = parser.parse_args()
    global SUBSTITUTE
    SUBSTITUTE = not args.no_substitute
    files = args.files or FILES
    outcomes: dict[str, dict[str, str]] = {}
    sides = ("reference", "lens")
    if args.reference_from:
        earlier = json.loads(args.reference_from.read_text())
        outcomes = {t: {"reference": o["reference"], "lens": "absent"} for t, o in earlier.items()
                    if o["reference"] != "absent"}
        sides = ("lens",)
    for side in sides:
        dest = Path(tempfile.mkdtemp(prefix=f"tl_{side}_"))
        stage(args.repo, files, dest, lens=side == "lens")
        for test_id, o in run(dest, [f for f in files if (dest / f).exists()], side == "lens", args.timeout).items():
            outcomes.setdefault(test_id, {"reference": "absent", "lens": "absent"})[side] = o
        shutil.rmtree(dest, ignore_errors=True)
    table = per_file(outcomes)
    for name, row in sorted(table.items()):
        print(" / ".join(f"{n:4d}" for n in row), "", name)
    totals = [sum(r[i] for r in table.values()) for i in range(4)]
    print(" / ".join(f"{n:4d}" for n in totals), " all (lens passes / sensible / pass on TransformerLens "
          "offline / collected)")
    failing = sorted(t for t, o in outcomes.items()
                     if o["reference"] == "passed" and o["lens"] != "passed" and not_sensible(t) is None)
    print(f"sensible tests lens fails ({len(failing)}):", *failing, sep="\n  ")
    args.out.write_text(json.dumps(outcomes, indent=1, sort_keys=True))
    print(f"every outcome: {args.out}")


if __name__ == "__main__":
    main()
