"""README.md and docs/*.md tell the truth about the command lines and the repository: every `python ...` command in
their code blocks names a script that exists and whose argparse parser accepts the flags (parsed with the script's
get_args_parser(), not run), every `--flag` they mention exists in one of the scripts, every repository path they
name exists, and every relative link (and its #anchor) resolves. The original README's commands are in README.md
verbatim, and the README's test command is the one CI runs."""
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
#: Every documentation file the checks below apply to: the README and docs/*.md.
DOCS = [README] + sorted((REPO / "docs").glob("*.md"))

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

#: Scripts whose flags the documentation may mention.
SCRIPTS = ["train_gta2cityscapes_multi.py", "evaluate_cityscapes.py", "compute_iou.py", "tools/check_data.py",
           "tools/make_synthetic_data.py", "tools/visualize.py", "tools/demo.py", "tools/prepare_cache.py"]

#: Flags of other programs that the documentation mentions (pip, pytest, TensorBoard). A flag of our scripts never
#: belongs here: add it to the script, or remove it from the documentation.
EXTERNAL_FLAGS = {"--index-url", "--durations", "--logdir",
                  # torchrun's own flags (the Speed and multi-GPU section)
                  "--standalone", "--nproc-per-node", "--nnodes", "--rdzv-"}

#: `python -m MODULE` commands the documentation may show.
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


def doc_name(path: Path) -> str:
    return str(path.relative_to(REPO))


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every python command of every documentation file."""
    return [(doc_name(p), c) for p in DOCS for c in python_commands(p.read_text())]


def prose(text: str) -> str:
    """The text outside code blocks (links and headings live there)."""
    return re.sub(r"^[ \t]*```[^\n]*\n.*?^[ \t]*```", "", text, flags=re.M | re.S)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation other than '-' and '_' dropped, spaces
    to '-', a repeated heading suffixed -1, -2, ..."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", prose(text), re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n, candidate = 0, anchor
        while candidate in anchors:
            n += 1
            candidate = f"{anchor}-{n}"
        anchors.add(candidate)
    return anchors


def test_documentation_has_python_commands():
    # guards the extraction itself: a regex that silently finds nothing would make the checks below vacuous
    assert (REPO / "docs").is_dir() and len(DOCS) > 1, "docs/*.md are missing"
    assert len(doc_commands()) >= 20, doc_commands()


@pytest.mark.parametrize("doc,command", doc_commands() if README.is_file() else [])
def test_documented_command_parses(doc, command):
    argv = shlex.split(command, comments=True)
    if argv[1] == "-m":
        assert argv[2] in MODULES, f"unexpected module in {doc}: {command}"
        return
    if argv[1] in ("-c", "-"):  # inline or stdin program, nothing to parse
        return
    assert not any(a.startswith("<") or a == "..." for a in argv), f"placeholder in a runnable command in {doc}: {command}"
    script = argv[1]
    assert (REPO / script).is_file(), f"{doc}: command names a missing script: {command}"
    parser = parser_of(script)
    try:
        parser.parse_args(argv[2:])
    except SystemExit as exc:
        pytest.fail(f"{script}'s parser rejects the command of {doc} (exit {exc.code}): {command}")


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


@lru_cache(maxsize=None)
def known_flags() -> frozenset[str]:
    known = set(EXTERNAL_FLAGS)
    for script in SCRIPTS:
        for parser in all_parsers(parser_of(script)):
            known.update(parser._option_string_actions)
    return frozenset(known)


@pytest.mark.parametrize("doc", DOCS, ids=doc_name)
def test_every_flag_mentioned_exists(doc):
    mentioned = set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", doc.read_text()))
    unknown = sorted(mentioned - known_flags())
    assert not unknown, (f"{doc_name(doc)} mentions flags that no script accepts: {unknown} (if one belongs to "
                         "another program, add it to EXTERNAL_FLAGS)")


@pytest.mark.parametrize("doc", DOCS, ids=doc_name)
def test_repository_paths_mentioned_exist(doc):
    # files of the repository (not the .pth files a user downloads into model/)
    paths = set(re.findall(r"(?<![\w/.])((?:tools|utils|model|dataset|tests|bench|docs|\.ci)/[\w./-]*\w)",
                           doc.read_text()))
    paths = {p for p in paths if not p.endswith(".pth")}
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"{doc_name(doc)} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=doc_name)
def test_relative_links_resolve(doc):
    """Every relative markdown link `[text](path)` or `[text](path#anchor)` or `[text](#anchor)` points to a file of
    the repository and, with an anchor, to one of that markdown file's headings."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists() or REPO not in path.parents and path != REPO:
            broken.append(f"{target} (no such file)")
        elif anchor and (path.suffix != ".md" or anchor not in heading_anchors(path.read_text())):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{doc_name(doc)} has broken links: {broken}"


def test_readme_links_every_docs_file():
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme_text()))
    unlinked = sorted(doc_name(p) for p in DOCS[1:] if doc_name(p) not in linked)
    assert not unlinked, f"README.md does not link to {unlinked}"


def test_released_weights_and_paper_numbers():
    from utils import weights

    text = readme_text()
    for url in (weights.RESTORE_FROM_INIT, weights.RESTORE_FROM_MULTI, weights.RESTORE_FROM_VGG,
                weights.RESTORE_FROM_ORACLE):
        assert url in text
    for number in ("36.6", "41.4", "42.4", "44.1", "35.0", "65.1"):
        assert number in text
    assert "@inproceedings{Tsai_adaptseg_2018" in text
