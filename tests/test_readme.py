"""README.md tells the truth about the command lines: every `python ...` command in its code blocks names a script
that exists and whose argparse parser accepts the flags (parsed with the script's get_args_parser(), not run), the
original README's commands are there verbatim, the test command is the one CI runs, and every `--flag` the README
mentions exists in one of the scripts."""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: The original AdaptSegNet README's commands (wasidennis/AdaptSegNet), each of which must appear and work as written.
ORIGINAL_COMMANDS = [
    "python evaluate_cityscapes.py --restore-from ./model/GTA2Cityscapes_multi-ed35151c.pth",
    "python evaluate_cityscapes.py --model DeeplabVGG --restore-from ./model/GTA2Cityscapes_vgg-ac4ac9f6.pth",
    "python compute_iou.py ./data/Cityscapes/data/gtFine/val result/cityscapes",
    "python train_gta2cityscapes_multi.py --snapshot-dir ./snapshots/GTA2Cityscapes_multi --lambda-seg 0.1 "
    "--lambda-adv-target1 0.0002 --lambda-adv-target2 0.001",
    "python train_gta2cityscapes_multi.py --snapshot-dir ./snapshots/GTA2Cityscapes_single --lambda-seg 0.0 "
    "--lambda-adv-target1 0.0 --lambda-adv-target2 0.001",
    "python train_gta2cityscapes_multi.py --snapshot-dir ./snapshots/GTA2Cityscapes_single_lsgan --lambda-seg 0.0 "
    "--lambda-adv-target1 0.0 --lambda-adv-target2 0.01 --gan LS",
    "python evaluate_cityscapes.py --restore-from ./snapshots/GTA2Cityscapes_multi/GTA5_150000.pth",
]

#: Scripts whose flags the README may mention.
SCRIPTS = ["train_gta2cityscapes_multi.py", "evaluate_cityscapes.py", "compute_iou.py", "tools/check_data.py",
           "tools/make_synthetic_data.py", "tools/visualize.py", "tools/demo.py"]

#: Flags of other programs that the README mentions (pip, pytest, TensorBoard). A flag of our scripts never
#: belongs here: add it to the script, or remove it from the README.
EXTERNAL_FLAGS = {"--index-url", "--durations", "--logdir",
                  # torchrun's own flags (the Speed and multi-GPU section)
                  "--standalone", "--nproc-per-node", "--nnodes", "--rdzv-"}

#: `python -m MODULE` commands the README may show.
MODULES = {"pytest", "venv", "pip"}


def readme_text() -> str:
    assert README.is_file(), "README.md is missing"
    return README.read_text()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", text, re.M | re.S)


def command_lines(block: str) -> list[str]:
    """Shell commands of a code block: continuation lines joined, a leading '$ ' prompt removed, and
    `a && b`, `a; b`, `a | b` split into their parts (outside quotes). Each command comes back as its words
    re-joined with single spaces (quoted where needed)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # not shell (e.g. program output with an odd quote)
            continue
        words: list[str] = []
        for tok in tokens + [";"]:
            if tok and set(tok) <= set(";&|"):
                if words:
                    out.append(shlex.join(words))
                words = []
            else:
                words.append(tok)
    return out


def python_commands(text: str) -> list[str]:
    return [c for b in code_blocks(text) for c in command_lines(b) if re.match(r"python3? ", c)]


@lru_cache(maxsize=None)
def parser_of(script: str) -> argparse.ArgumentParser:
    path = REPO / script
    spec = importlib.util.spec_from_file_location("readme_check_" + re.sub(r"\W", "_", script), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert hasattr(module, "get_args_parser"), f"{script} has no get_args_parser()"
    return module.get_args_parser()


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


def test_readme_has_python_commands():
    commands = python_commands(readme_text())
    assert len(commands) >= 20, commands


@pytest.mark.parametrize("command", python_commands(README.read_text()) if README.is_file() else [])
def test_readme_command_parses(command):
    argv = shlex.split(command, comments=True)
    if argv[1] == "-m":
        assert argv[2] in MODULES, f"unexpected module in {command}"
        return
    if argv[1] in ("-c", "-"):  # inline or stdin program, nothing to parse
        return
    assert not any(a.startswith("<") or a == "..." for a in argv), f"placeholder in a runnable command: {command}"
    script = argv[1]
    assert (REPO / script).is_file(), f"README command names a missing script: {command}"
    parser = parser_of(script)
    try:
        parser.parse_args(argv[2:])
    except SystemExit as exc:
        pytest.fail(f"{script}'s parser rejects the README command (exit {exc.code}): {command}")


def test_original_commands_verbatim():
    commands = set(python_commands(readme_text()))
    missing = [c for c in ORIGINAL_COMMANDS if c not in commands]
    assert not missing, f"the original README's commands are missing: {missing}"


def test_quick_start_is_two_commands_and_tests_match_ci():
    text = readme_text()
    section = text[text.index("## Quick start"):]
    section = section[: section.index("\n## ", 3)]
    block = code_blocks(section)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert "pip install -r requirements.txt" in lines[0] and "python tools/demo.py" in lines[0]
    ci = (REPO / ".ci" / "run").read_text()
    ci_test = [line.strip() for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert ci_test == [lines[1].strip()] == ["python -m pytest -q"]


def test_every_flag_mentioned_exists():
    known = set(EXTERNAL_FLAGS)
    for script in SCRIPTS:
        for parser in all_parsers(parser_of(script)):
            known.update(parser._option_string_actions)
    mentioned = set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", readme_text()))
    unknown = sorted(mentioned - known)
    assert not unknown, (f"README mentions flags that no script accepts: {unknown} (if one belongs to another "
                         "program, add it to EXTERNAL_FLAGS)")


def test_repository_paths_mentioned_exist():
    # files of the repository (not the .pth files a user downloads into model/)
    paths = set(re.findall(r"(?<![\w/.])((?:tools|utils|model|dataset|tests|\.ci)/[\w./-]*\w)", readme_text()))
    paths = {p for p in paths if not p.endswith(".pth")}
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"README names files that do not exist: {missing}"


def test_released_weights_and_paper_numbers():
    from utils import weights

    text = readme_text()
    for url in (weights.RESTORE_FROM_INIT, weights.RESTORE_FROM_MULTI, weights.RESTORE_FROM_VGG,
                weights.RESTORE_FROM_ORACLE):
        assert url in text
    for number in ("36.6", "41.4", "42.4", "44.1", "35.0", "65.1"):
        assert number in text
    assert "@inproceedings{Tsai_adaptseg_2018" in text
