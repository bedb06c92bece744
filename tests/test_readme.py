"""Every fenced code block of README.md and deploy/README.md is executed, so the docs stay true.

How a block runs depends on its language (the fence's info string):

- ``python``: as a script (``python block.py``) in a scratch directory;
- ``bash``/``sh``: as a script (``bash -e block.sh``) with the project's ``slotkeeper`` on PATH;
- ``yaml``: a limits file through ``slotkeeper apply --dry-run``; a Prometheus configuration
  through ``promtool check config`` (with the shipped rules beside it);
- ``promql``: every expression through ``promtool check rules``, and its metrics must be exported;
- ``text``: only with a named check in ``TEXT_CHECKS`` (e.g. the CLI synopsis against the real CLI).

Each block runs against this module's private redis-server, in a namespace of its own, with a
private ``SLOTKEEPER_HOME``, after the setup declared for it in ``SETUP`` (the limits it needs, env,
names it leaves to the reader). A block is named by its file, the heading it sits under and its
position there (``README.md > Using it > 1``), or by ``name=...`` in its info string
(```` ```python name=quickstart ````) if it needs a name that survives edits around it.

Blocks that cannot run here (systemd, Docker, Kubernetes, root) are in ``CANNOT_RUN_HERE``, long
ones (installs, the whole suite, benchmarks) in ``TOO_LONG``, each with its reason; they are still
syntax-checked (``bash -n``, ``compile``, YAML parse). Any other block runs: a new block that fails
fails this test. To add a block: write it, run this test; if it needs limits, add a ``SETUP`` entry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from slotkeeper.broker.client import Broker
from tests.support.redisproc import RedisProc
from tests.test_deploy import DEPLOY, docs_metrics, tool

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "deploy/README.md")
BIN = Path(sys.executable).parent  # the venv's bin: `slotkeeper`, `python`


# -- what each block needs, and which blocks do not run here ---------------------------------------


@dataclass(frozen=True)
class Setup:
    """What a block needs that the docs leave to the reader."""

    limits: Mapping[str, int] = field(default_factory=dict)  # created in the block's namespace
    other_namespaces: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    prelude: str = ""  # python put before the block (names a snippet leaves to the reader)
    subst: Mapping[str, str] = field(default_factory=dict)  # text replaced; {url} = private Redis
    stdout_has: tuple[str, ...] = ()  # what the block must print (proof it did its work)
    timeout: float = 120.0


SETUP: dict[str, Setup] = {
    "README.md > Why am I waiting? > 1": Setup(limits={"gpu": 1}),
    "README.md > Rates, per-key limits, backpressure > 1": Setup(  # limits with rates
        prelude=("from slotkeeper import get_limiter\n"
                 "_b = get_limiter().broker\n"
                 "_b.create_limit('api', rate='600/min')\n"
                 "_b.create_limit('db', 10)\n"
                 "_b.create_limit('llm', rate='100000/h')\n")),
    "README.md > slotkeeper > 1": Setup(
        limits={"gpu:gpu-1": 2}, env={"SLOTKEEPER_WORKER": "gpu-1"}, prelude="def train(): pass\n"
    ),
    "README.md > Using it > 1": Setup(
        limits={"db": 10, "a": 2, "b": 2, "print": 1, "api": 5},
        other_namespaces={"prod": {"db": 10}},
        subst={"redis://redis:6379/0": "{url}"},
    ),
    "README.md > executor": Setup(stdout_has=("hi alice", "hi bob", "hi chris")),
    "README.md > global-scope": Setup(limits={"db": 10}, stdout_has=("1024",)),
    "README.md > dask": Setup(
        limits={"gpu:0": 1, "gpu:1": 1}, stdout_has=("[0, 1, 4, 9, 16, 25, 36, 49]",), timeout=300
    ),
    "README.md > prefect": Setup(  # Prefect starts a temporary API server: slow on a busy machine
        env={"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"},
        stdout_has=("hi alice", "hi bob", "hi chris"),
        timeout=600,
    ),
    "README.md > The `slotkeeper` command > 3": Setup(stdout_has=("gpu:gpu-1 holds lease",)),
    "README.md > prefect-gcl": Setup(  # a Prefect API with limits: tests/test_prefect_dropin.py
        subst={
            "prefect gcl ls --output json > gcl.json": "echo '"
            + json.dumps([{"name": "gpu:gpu-1", "limit": 2, "active": True}])
            .replace("{", "{{")
            .replace("}", "}}")  # subst values go through str.format
            + "' > gcl.json"
        },
        stdout_has=("+ create gpu:gpu-1 (slots=2",),
    ),
    "README.md > ray": Setup(stdout_has=("[0, 1, 2, 3]",), timeout=300),  # a local Ray instance
}

CANNOT_RUN_HERE: dict[str, str] = {
    "README.md > The status page > 1": "a daemon on port 9808 (tests/test_http_api.py, "
    "tests/test_status_page.py and tests/test_events.py serve the same paths on free ports)",
    "README.md > Deploying > 2": "systemd and root (useradd, /etc, systemctl)",
    "deploy/README.md > Deploying: from zero to a scraped daemon > 1": "root and a system Redis "
    "under systemd (/etc/redis, systemctl restart)",
    "deploy/README.md > Deploying: from zero to a scraped daemon > 2": "root (useradd, /opt) and a "
    "Redis at redis.internal",
    "deploy/README.md > Deploying: from zero to a scraped daemon > 3": "systemd and root",
    "deploy/README.md > Deploying: from zero to a scraped daemon > 5": "a Prometheus under "
    "systemd (/etc/prometheus, systemctl reload)",
    "deploy/README.md > Deploying: from zero to a scraped daemon > 6": "no Docker engine here",
    "deploy/README.md > Deploying: from zero to a scraped daemon > 7": "no Docker engine or "
    "Kubernetes cluster here",
}

TOO_LONG: dict[str, str] = {
    "README.md > Quick start > 1": "installs the package into a new venv (minutes); the demo itself "
    "runs in tests/test_cli_demo.py",
    "README.md > Quick start > 2": "the whole test suite (this test is part of it)",
    "README.md > Rates and templates > 1": "benchmarks (minutes); `bench --quick` runs in "
    "tests/test_bench_smoke.py",
    "deploy/README.md > Checking this directory > 1": "installs the deploy checkers and runs the "
    "deploy tests (both run in scripts/test.sh anyway)",
}


# -- the blocks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: str
    heading: str
    index: int  # 1-based among the blocks under this heading
    lang: str
    name: str | None  # name=... from the info string
    code: str
    line: int

    @property
    def id(self) -> str:
        return (
            f"{self.doc} > {self.name}"
            if self.name
            else f"{self.doc} > {self.heading} > {self.index}"
        )

    @property
    def kind(self) -> str:
        return LANGS.get(self.lang, self.lang)


LANGS = {
    "python": "python",
    "py": "python",
    "bash": "shell",
    "sh": "shell",
    "shell": "shell",
    "yaml": "yaml",
    "yml": "yaml",
    "promql": "promql",
    "text": "text",
    "": "text",
}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")


def parse_blocks(doc: str, text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with the heading each sits under."""
    blocks: list[Block] = []
    heading, counts = "", dict[str, int]()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            h = HEADING.match(lines[i])
            if h:
                heading = h["title"]
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].split()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            ln = lines[i]
            body.append(ln[len(indent) :] if ln.startswith(indent) else ln.lstrip())
            i += 1
        assert i < len(lines), f"{doc}:{start}: unclosed code fence"
        i += 1
        attrs = dict(a.split("=", 1) for a in info[1:] if "=" in a)
        counts[heading] = counts.get(heading, 0) + 1
        blocks.append(
            Block(
                doc,
                heading,
                counts[heading],
                info[0] if info else "",
                attrs.get("name"),
                "\n".join(body) + "\n",
                start,
            )
        )
    return blocks


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in parse_blocks(doc, (ROOT / doc).read_text())]


BLOCKS = all_blocks()


# -- running one block ----------------------------------------------------------------------------


@dataclass
class Env:
    """Where a block runs: the private Redis, a fresh namespace, a scratch directory."""

    redis: RedisProc
    work: Path
    namespace: str = field(default_factory=lambda: "readme" + uuid.uuid4().hex[:8])

    def vars(self, setup: Setup) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLOTKEEPER_", "PREFECT_"))}
        env.update(
            SLOTKEEPER_URL=self.redis.url,
            SLOTKEEPER_NAMESPACE=self.namespace,
            SLOTKEEPER_HOME=str(self.work / "sk-home"),
            PATH=str(BIN) + os.pathsep + env.get("PATH", ""),
            PREFECT_HOME=str(self.work / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_TO_API_ENABLED="false",
            PYTHONUNBUFFERED="1",
        )
        env.update(setup.env)
        return env

    def prepare(self, setup: Setup) -> None:
        for ns, limits in [(self.namespace, setup.limits), *setup.other_namespaces.items()]:
            broker = Broker.from_url(self.redis.url, ns)
            try:
                for name, slots in limits.items():
                    if name not in broker.list_limits():
                        broker.create_limit(name, slots)
            finally:
                broker.close()


def run_proc(argv: list[str], env: Env, setup: Setup, block: Block) -> str:
    proc = subprocess.run(
        argv,
        cwd=env.work,
        env=env.vars(setup),
        capture_output=True,
        text=True,
        timeout=setup.timeout,
    )
    out = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{block.id} (line {block.line}) exited {proc.returncode}\n{out}"
    for want in setup.stdout_has:
        assert want in proc.stdout, f"{block.id}: expected {want!r} in its output\n{out}"
    return proc.stdout


def source(block: Block, setup: Setup, env: Env) -> str:
    code = block.code
    for old, new in setup.subst.items():
        assert old in code, f"{block.id}: SETUP replaces {old!r}, which is no longer in the block"
        code = code.replace(old, new.format(url=env.redis.url))
    return code


def run_python(block: Block, setup: Setup, env: Env) -> None:
    path = env.work / "block.py"
    path.write_text(setup.prelude + source(block, setup, env))
    run_proc([sys.executable, str(path)], env, setup, block)


def run_shell(block: Block, setup: Setup, env: Env) -> None:
    path = env.work / "block.sh"
    path.write_text(source(block, setup, env))
    run_proc(["bash", "-e", str(path)], env, setup, block)


def run_yaml(block: Block, setup: Setup, env: Env) -> None:
    doc = yaml.safe_load(block.code)
    assert isinstance(doc, dict), f"{block.id}: a YAML block must be a mapping"
    if "limits" in doc:
        (env.work / "limits.yaml").write_text(block.code)
        run_proc(
            [str(BIN / "slotkeeper"), "apply", "-f", "limits.yaml", "--dry-run"], env, setup, block
        )
    elif "scrape_configs" in doc:
        for rules in doc.get("rule_files", []):
            shutil.copy(DEPLOY / "prometheus" / Path(rules).name, env.work / Path(rules).name)
        (env.work / "prometheus.yml").write_text(block.code)
        run_proc([tool("promtool"), "check", "config", "prometheus.yml"], env, setup, block)
    else:
        pytest.fail(
            f"{block.id}: a YAML block that is neither a limits file nor a Prometheus "
            "configuration: add a handler to tests/test_readme.py"
        )


def promql_exprs(block: Block) -> list[str]:
    return [ln.strip() for ln in block.code.splitlines() if ln.strip() and not ln.startswith("#")]


def check_promql(block: Block, env: Env) -> None:
    exprs = promql_exprs(block)
    assert exprs, f"{block.id}: no expressions"
    rules = {
        "groups": [
            {
                "name": "readme",
                "rules": [{"record": f"readme:expr{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    (env.work / "readme-rules.yml").write_text(yaml.safe_dump(rules))
    res = subprocess.run(
        [tool("promtool"), "check", "rules", "readme-rules.yml"],
        cwd=env.work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, f"{block.id}: promtool: {res.stdout}{res.stderr}"
    known = set(docs_metrics())
    for e in exprs:
        for metric in re.findall(r"\bslotkeeper_\w+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in known or base in known, f"{block.id}: {metric} is not a metric"


# -- named checks of text blocks -------------------------------------------------------------------


def check_synopsis(block: Block, env: Env) -> None:
    """The CLI synopsis: every command and option it shows exists, every command is shown."""
    import click

    from slotkeeper.cli.main import cli

    def opts(cmd: click.Command) -> set[str]:
        return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}

    shown: set[str] = set()
    for line in block.code.splitlines():
        words = line.split("#")[0].split()
        if not words or words[0] != "slotkeeper":
            continue
        cmd: click.Command = cli
        rest = words[1:]
        sub = next((w for w in rest if not w.startswith(("-", "["))), None)
        if sub in cli.commands:
            cmd = cli.commands[sub]
            shown.add(sub)
            if isinstance(cmd, click.Group):
                nxt = rest[rest.index(sub) + 1]
                assert set(nxt.split("|")) <= set(cmd.commands), f"{line}: {nxt}"
        for opt in re.findall(r"(?<![\w-])--?[a-z][a-z-]*", " ".join(rest)):
            assert opt in opts(cmd) | opts(cli), f"{block.id}: `{line.strip()}`: no option {opt}"
    assert shown == set(cli.commands), f"commands not in the synopsis: {set(cli.commands) - shown}"


def check_acl_line(block: Block, env: Env) -> None:
    """The ACL line shown is the one shipped in deploy/redis/users.acl."""
    shipped = [
        ln
        for ln in (DEPLOY / "redis" / "users.acl").read_text().splitlines()
        if ln.startswith("user ")
    ]
    assert block.code.strip() in shipped, f"{block.id}: differs from deploy/redis/users.acl"


TEXT_CHECKS: dict[str, Callable[[Block, Env], None]] = {
    "README.md > The `slotkeeper` command > 1": check_synopsis,
    "README.md > Deploying > 1": check_acl_line,
    "deploy/README.md > Redis > 1": check_acl_line,
}


# -- syntax checks of blocks that do not run here --------------------------------------------------


def syntax_check(block: Block, env: Env) -> None:
    if block.kind == "python":
        compile(block.code, block.id, "exec")
    elif block.kind == "shell":
        res = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
        assert res.returncode == 0, f"{block.id}: {res.stderr}"
    elif block.kind == "yaml":
        yaml.safe_load(block.code)
    elif block.kind == "promql":
        check_promql(block, env)


def run_block(block: Block, env: Env) -> None:
    setup = SETUP.get(block.id, Setup())
    if block.id in CANNOT_RUN_HERE or block.id in TOO_LONG:
        syntax_check(block, env)
        return
    env.prepare(setup)
    if block.kind == "python":
        run_python(block, setup, env)
    elif block.kind == "shell":
        run_shell(block, setup, env)
    elif block.kind == "yaml":
        run_yaml(block, setup, env)
    elif block.kind == "promql":
        check_promql(block, env)
    elif block.kind == "text" and block.id in TEXT_CHECKS:
        TEXT_CHECKS[block.id](block, env)
    else:
        pytest.fail(
            f"{block.id} (line {block.line}): no way to run a {block.lang or 'plain'!r} "
            "block: give it a language, a TEXT_CHECKS entry, or list it with a reason"
        )


# -- the tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readme_redis() -> Iterator[RedisProc]:
    with RedisProc(tcp=True) as r:
        yield r


@pytest.fixture
def env(readme_redis: RedisProc, tmp_path: Path) -> Env:
    return Env(readme_redis, tmp_path)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block(block: Block, env: Env) -> None:
    run_block(block, env)


def test_block_ids_are_unique_and_every_listed_block_exists() -> None:
    ids = [b.id for b in BLOCKS]
    assert len(ids) == len(set(ids)), "two blocks share an id: give one a name=..."
    for table in (SETUP, CANNOT_RUN_HERE, TOO_LONG, TEXT_CHECKS):
        stale = set(table) - set(ids)
        assert not stale, f"listed blocks that no longer exist: {stale}"
    assert not set(CANNOT_RUN_HERE) & set(TOO_LONG)


def test_an_unlisted_failing_block_fails_the_test(env: Env) -> None:
    doc = "# T\n\n```python\nraise SystemExit(3)\n```\n\n```text\nfree text\n```\n"
    failing, plain = parse_blocks("NEW.md", doc)
    with pytest.raises(AssertionError, match="exited 3"):
        run_block(failing, env)
    with pytest.raises(pytest.fail.Exception, match="no way to run"):
        run_block(plain, env)


def test_indented_fences_in_list_items_are_found() -> None:
    doc = "## H\n\n1. step:\n   ```bash\n   echo one\n   ```\n2. next\n"
    (block,) = parse_blocks("X.md", doc)
    assert (block.id, block.kind, block.code) == ("X.md > H > 1", "shell", "echo one\n")


# -- what the docs say about the code --------------------------------------------------------------


def test_no_file_refers_to_a_design_document_outside_the_repository() -> None:
    outside = "DESIGN" + ".md"  # spelled apart so this file does not match itself
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    hits = [
        f
        for f in files.split()
        if (ROOT / f).is_file() and outside in (ROOT / f).read_text(errors="replace")
    ]
    assert not hits, f"{outside} is not in this repository, yet named in {hits}"


def test_every_url_scheme_the_client_accepts_is_documented() -> None:
    from slotkeeper.broker.connection import _SCHEMES

    readme, deploy = ((ROOT / d).read_text() for d in DOCS)
    for scheme in _SCHEMES:
        if not scheme.startswith("rediss+"):  # the TLS forms are described once, generally
            assert f"{scheme}://" in readme, f"README.md does not name {scheme}://"
    assert "redis+cluster://" in deploy and "no cluster URL scheme" not in deploy


def test_daemon_metrics_are_never_said_to_be_summed() -> None:
    """Per-limit figures: `max by`, never `sum` (every daemon exports the same); the daemon's own
    figures are read per instance: no paragraph about slotkeeper_daemon_* suggests a sum."""
    for doc in DOCS:
        for para in (ROOT / doc).read_text().split("\n\n"):
            if "slotkeeper_daemon_*" in para:
                rest = para.replace("never `sum`", "")
                assert not re.search(r"\bsum\b", rest), f"{doc}: {para}"
