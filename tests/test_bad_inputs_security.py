"""Security properties (docs/reliability.md, SECURITY): model output is never executed, checkpoints load
weights-only, no remote code, no shell commands built from config strings. Credentials in logged configs
are covered by tests/test_resume.py (run directory scan) and test_resume.py::test_redact_secrets."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

from papo.rewards import get_reward_fn, grading_worker, score_batch

SRC = Path(__file__).resolve().parents[1] / "src"

PAYLOADS = [
    "__import__('os').system('touch /tmp/papo_pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "exec('import os')",
    "eval('1+1')",
    "lambda: __import__('subprocess').call(['id'])",
    "open('/etc/passwd').read()",
    "x.__globals__",
]


def test_grader_never_evaluates_model_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grading hostile answers: no eval/exec/compile ever sees text from them, and sympy's parse_expr (reached
    through sympy.Number(text) in math-verify's LaTeX visitor) only sees numeric literals or identifiers."""
    import sympy.parsing.sympy_parser as sympy_parser

    reward = get_reward_fn("math", format_weight=0.1, timeout_s=2.0)
    monkeypatch.setattr(grading_worker._IN_PROCESS, "on", True, raising=False)  # spy on grading here
    score_batch(["<think>x</think> \\boxed{\\frac{1}{2}}"], ["0.5"], reward)  # warm-up: imports, caches
    leaked: list[str] = []
    for name in ("eval", "exec", "compile"):
        original = getattr(builtins, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            if isinstance(args[0], str) and any(m in args[0] for m in MARKERS):
                leaked.append(f"{_name}({args[0][:80]!r})")
            return _original(*args, **kwargs)

        monkeypatch.setattr(builtins, name, spy)
    parsed: list[str] = []
    original_parse_expr = sympy_parser.parse_expr

    def parse_expr_spy(s, *args, **kwargs):
        parsed.append(s)
        return original_parse_expr(s, *args, **kwargs)

    monkeypatch.setattr(sympy_parser, "parse_expr", parse_expr_spy)
    responses = [f"<think>x</think> \\boxed{{{p}}}" for p in PAYLOADS] + ["\\boxed{1,000.5}", "\\boxed{12}"]
    scores, n_err = score_batch(responses, ["1"] * len(responses), reward)
    score_batch([f"\\boxed{{{p}}}" for p in PAYLOADS], PAYLOADS, reward)  # hostile ground truths too
    monkeypatch.undo()
    assert n_err == 0 and scores["accuracy"] == [0.0] * len(responses)
    assert leaked == [], leaked
    assert parsed, "expected sympy.Number(text) to reach parse_expr for the numbers"
    assert all(re.fullmatch(r"[0-9.]+([eE][+-]?[0-9]+)?|[A-Za-z]+", s) for s in parsed), parsed
    assert not Path("/tmp/papo_pwned").exists()


MARKERS = (
    "__import__",
    "system",
    "__class__",
    "__globals__",
    "open(",
    "lambda",
    "exec(",
    "eval(",
    "subprocess",
)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.id
                if isinstance(f, ast.Name)
                else f"{ast.unparse(f.value)}.{f.attr}"
                if isinstance(f, ast.Attribute)
                else ""
            )
            yield name, node


FORBIDDEN_CALLS = {
    "eval": "evaluates strings",
    "exec": "executes strings",
    "os.system": "runs a shell",
    "os.popen": "runs a shell",
    "pickle.load": "unpickles arbitrary objects",
    "pickle.loads": "unpickles arbitrary objects",
    "parse_expr": "sympy's parse_expr uses eval",
    "sympify": "sympify(str) uses eval",
}


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_source_has_no_unsafe_calls(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for name, node in _calls(tree):
        short = name.rsplit(".", 1)[-1] if name.startswith("sympy.") else name
        if short in FORBIDDEN_CALLS and not (short == "sympify" and "rewards/grading.py" in str(path)):
            problems.append(f"line {node.lineno}: {name}() {FORBIDDEN_CALLS[short]}")
        if any(k.arg == "shell" and getattr(k.value, "value", False) is not False for k in node.keywords):
            problems.append(f"line {node.lineno}: {name}(shell=...) -- pass an argument list, never a shell")
        if name == "torch.load" and not any(
            k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords
        ):
            problems.append(f"line {node.lineno}: torch.load without weights_only=True")
        for k in node.keywords:
            if k.arg == "trust_remote_code" and getattr(k.value, "value", None) is True:
                problems.append(f"line {node.lineno}: trust_remote_code=True hard-coded")
    assert not problems, f"{path.relative_to(SRC)}: {problems}"


def test_sympify_in_the_grader_only_sees_sympy_objects() -> None:
    """grading.py may call sympify, but only on objects math-verify's LaTeX visitor built (docstring)."""
    text = (SRC / "papo" / "rewards" / "grading.py").read_text()
    assert "ExprExtractionConfig" not in text.replace("``ExprExtractionConfig``", "")
    assert "parse_expr(" not in text.replace("``parse_expr``", "")


def test_checkpoints_and_weights_load_weights_only() -> None:
    """The pipeline resumes with weights_only=True; the model config defaults to no remote code."""
    from omegaconf import OmegaConf

    pipeline = (SRC / "papo" / "pipeline.py").read_text()
    assert "weights_only=True" in pipeline
    model = OmegaConf.load(SRC.parent / "configs" / "model" / "tiny.yaml")
    assert model.trust_remote_code is False
