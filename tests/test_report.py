"""report.html and results with intervals, from a constructed run folder; rendered in Chromium.

``make_run`` writes the files ``ekt run`` leaves (results.json, manifest, config,
eval/<label>/problems.jsonl and executions, teacher executions, train pairs,
train logs, expert-iteration rounds) with known, varied outcomes, including
model output that tries to inject HTML and script.
"""

from __future__ import annotations

import base64
import json
import os
import random
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ekt.cli import main
from ekt.evaluation.metrics import score_problems
from ekt.report.build import add_statistics, build_report, finish_run
from ekt.report.load import load_run, load_yields

INJECT = (
    "</code></pre></details><script>window.__pwned = 1; console.error('pwned')</script>"
    '<img src="x" onerror="window.__pwned = 2; console.error(\'pwned\')">'
)
MODELS = [  # label, method, model, skill
    ("teacher", "few-shot", "big-teacher", 1.0),
    ("student-base", "none", "small-student", -3.0),
    ("student-ekt", "ekt", "small-student", 0.3),
    ("student-supervised", "supervised", "small-student", 0.6),
    ("student-kd", "kd", "small-student", -1.0),
]


def _dump(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(
    root: Path,
    name: str = "fake",
    questions: int = 120,
    n: int = 10,
    seed: int = 0,
    rounds: bool = True,
    data_dir: Path | None = None,
) -> Path:
    rng = random.Random(seed)
    d = root / name
    ks = [1, n]
    ev = {"split": "test", "limit": questions, "n": n, "k": ks, "temperature": 0.6}
    difficulty = [rng.gauss(0, 1.5) for _ in range(questions)]
    rows = []
    for label, method, model, skill in MODELS:
        probs, sampled, greedy = [], [], []
        for q in range(questions):
            pid = f"gsm8k/test/{q}"
            p = 1 / (1 + pow(2.718, -(skill - difficulty[q]) * 1.5))
            oks = [rng.random() < p for _ in range(n)]
            for s, ok in enumerate(oks):
                kind = rng.choice(["ok", "error", "timeout"]) if not ok else "ok"
                prog = f"def solution():\n    x = {q} * {s}\n    return x\n"
                if q == 1 and s == 0:
                    prog = f"def solution():\n    return '{INJECT}'\n"
                sampled.append(
                    {
                        "problem_id": pid,
                        "sample_idx": s,
                        "program": prog,
                        "status": kind,
                        "value": 18 if ok else (7 if kind == "ok" else None),
                        "type": {"ok": "int", "error": "NameError", "timeout": ""}[kind],
                        "error": INJECT if kind == "error" else "",
                        "correct": ok,
                    }
                )
            g = rng.random() < p
            greedy.append(
                {
                    "problem_id": pid,
                    "sample_idx": 0,
                    "program": "def solution():\n    return 18 if True else '<b>'\n",
                    "status": "ok",
                    "value": 18 if g else 5,
                    "type": "int",
                    "correct": g,
                }
            )
            c = sum(oks)
            probs.append(
                {
                    "problem_id": pid,
                    "question": f"Question {q} <script>console.error('q{q}')</script>?",
                    "gold": 18,
                    "n": n,
                    "c": c,
                    "greedy_correct": g,
                    "majority_answer": 18.0 if 2 * c > n else 7.0,
                    "majority_correct": 2 * c > n,
                }
            )
        e = d / "eval" / label
        _dump(e / "problems.jsonl", probs)
        _dump(e / "sampled" / "executions.jsonl", sampled)
        _dump(e / "greedy" / "executions.jsonl", greedy)
        scores = score_problems(probs, ks)
        (e / "scores.json").write_text(json.dumps({**scores, "settings": {"model": model}}))
        row = {"label": label, "model": model, "method": method, "prompt": "student", **scores}
        if method in ("ekt", "supervised", "kd"):
            row["pairs"] = 40
        rows.append(row)
    rows.append({"label": "student-seq-kd", "method": "seq-kd", "pairs": 0, "skipped": "x<y>"})
    # teacher samples on training questions, and the kept pairs
    tex = []
    for q in range(30):
        for s in range(4):
            ok = rng.random() < 0.25
            tex.append(
                {
                    "problem_id": f"gsm8k/train/{q}",
                    "sample_idx": s,
                    "program": "def solution():\n    return 1\n",
                    "status": "ok" if ok or s % 2 else "error",
                    "type": "int" if ok or s % 2 else "SyntaxError",
                    "value": 1,
                    "correct": ok,
                }
            )
    _dump(d / "teacher" / "executions.jsonl", tex)
    solved = sorted({r["problem_id"] for r in tex if r["correct"]})
    _dump(d / "train_pairs.jsonl", [{"problem_id": p, "program": "x"} for p in solved])
    for method, base in (("ekt", 2.0), ("supervised", 1.6), ("kd", 2.4)):
        s = d / "students" / method
        _dump(
            s / "train_log.jsonl",
            [{"step": i, "epoch": i / 20, "loss": base / (1 + 0.2 * i)} for i in range(1, 21)]
            + [{"step": 20, "train_loss": 1.0, "train_runtime": 3.0}],
        )
        (s / "train_summary.json").write_text(
            json.dumps({"pairs": 40, "steps": 20, "final_loss": 0.4, "seconds": 12.5})
        )
    if rounds:
        _dump(
            d / "students" / "expert-iteration" / "rounds.jsonl",
            [
                {"round": r, "pairs": 10 * r, "yield": 0.1 * r, "pass@1": 0.02 * r, "note": "<i>"}
                for r in (1, 2, 3)
            ],
        )
    cfg = {"name": name, "task": "gsm8k", "teacher": "big-teacher", "student": "small-student"}
    cfg["data_dir"] = str(data_dir) if data_dir else None
    cfg["eval"] = ev
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "manifest.json").write_text(
        json.dumps(
            {
                "ekt": "0.1.0",
                "torch": "2.13.0+cpu",
                "data": {"source": cfg["data_dir"], "sha256": {"test.jsonl": "ab" * 32}},
                "seeds": {"teacher": 0, "eval": 1234},
                "stage_seconds": {"teacher sample": 10.5, "evaluate <all>": 3.25},
            }
        )
    )
    results = {
        "name": name,
        "note": "constructed <test> run",
        "teacher": "big-teacher",
        "student": "small-student",
        "eval": ev,
        "rows": rows,
        "stage_seconds": {},
    }
    (d / "results.json").write_text(json.dumps(results))
    return d


@pytest.fixture
def fake_data(tmp_path) -> Path:
    """The data folder the run was made from, gone by report time: question text (with HTML
    that the drill-down must escape) comes from the run's own records, not the dataset."""
    return tmp_path / "data-no-longer-here"


def test_results_gain_intervals_and_paired_differences(tmp_path):
    d = make_run(tmp_path)
    before = json.loads((d / "results.json").read_text())
    res = add_statistics(d)
    assert res == json.loads((d / "results.json").read_text())
    for old, row in zip(before["rows"], res["rows"]):
        if old.get("skipped"):
            assert "intervals" not in row
            continue
        assert set(row["intervals"]) == {"pass@1", "pass@10", "greedy_pass@1", "maj@10"}
        for key, iv in row["intervals"].items():
            assert iv["estimate"] == pytest.approx(old[key])
            assert iv["low"] <= iv["estimate"] <= iv["high"] and iv["questions"] == 120
    pd = res["paired_differences"]
    assert pd["reference"] == "student-ekt" and "student-ekt" not in pd["rows"]
    sup = pd["rows"]["student-supervised"]["pass@1"]
    rows = {r["label"]: r for r in res["rows"]}
    want = rows["student-supervised"]["pass@1"] - rows["student-ekt"]["pass@1"]
    assert sup["estimate"] == pytest.approx(want)
    base = pd["rows"]["student-base"]["pass@10"]
    assert base["high"] < 0  # the untrained student is clearly worse than EKT
    assert res["statistics"]["resamples"] == 2000 and res["statistics"]["notes"] == []
    md = (d / "results.md").read_text()
    assert "| big-teacher -> small-student | small-student | ekt |" in md
    assert "Paired differences vs ekt" in md and "skipped: x<y>" in md
    assert "95% intervals" in md


def test_small_runs_and_missing_reference_are_flagged(tmp_path):
    d = make_run(tmp_path, questions=30)
    (d / "eval" / "student-ekt" / "problems.jsonl").unlink()
    res = add_statistics(d)
    notes = res["statistics"]["notes"]
    assert any("small sample: 30 questions" in n for n in notes)
    assert any("no evaluated 'ekt' model" in n for n in notes)
    assert res["paired_differences"]["rows"] == {}
    assert "small sample" in (d / "results.md").read_text()


def test_report_html_is_self_contained_escaped_and_complete(tmp_path, fake_data):
    d = make_run(tmp_path, data_dir=fake_data)
    out = build_report([d])
    assert out == d / "report.html"
    page = out.read_text()
    assert page.count("<script>") == 1  # ours; everything from records is escaped
    assert "<img" not in page and "window.__pwned" in page
    assert "&lt;script&gt;window.__pwned" in page and "&lt;img src=&#34;x&#34;" in page
    assert "&lt;script&gt;console.error(&#39;q1&#39;)" in page  # question text, from the records
    for attr in ('src="http', 'href="http', "@import", "url("):
        assert attr not in page
    for section in ("summary", "results", "curves", "yields", "rounds", "training", "drill"):
        assert f'<section id="{section}">' in page
    assert page.count('<svg class="chart') >= 7
    tests, train = page.split('<h3 class="sub">Training questions')
    assert tests.count('<details class="q"') == 120
    # the training questions' drill-down: every question the teacher's verdicts cover
    assert train.count('<details class="q"') == sum(y.questions for y in load_yields(d)) > 0
    assert "rounds.jsonl" in page and "ekt − kd" not in page
    assert "pass@10" in page and "greedy_pass@1" in page
    assert "abababab" in page  # the manifest's data hash
    # A rebuild from the same records gives the same file.
    first = page
    build_report([d])
    assert out.read_text() == first


def test_partial_run_without_results_json_still_reports(tmp_path):
    d = make_run(tmp_path, rounds=False)
    (d / "results.json").unlink()
    (d / "eval" / "teacher" / "scores.json").unlink()  # killed between problems and scores
    shutil.rmtree(d / "students")
    run = load_run(d)
    assert {e.label for e in run.evals} == {m[0] for m in MODELS}
    page = build_report([d], out=tmp_path / "r.html").read_text()
    assert "No expert-iteration rounds" in page and "no trained students" in page


def test_finish_run_writes_all_three_outputs(tmp_path, capsys):
    d = make_run(tmp_path, questions=20, n=4)
    results = json.loads((d / "results.json").read_text())
    out = finish_run(d, results)
    assert "intervals" in out["rows"][0]
    assert (d / "report.html").is_file() and "[" in (d / "results.md").read_text()
    assert f"report: {d / 'report.html'}" in capsys.readouterr().out


def test_cli_report_puts_runs_side_by_side(tmp_path, capsys):
    a = make_run(tmp_path, "run-a", questions=40, seed=1)
    b = make_run(tmp_path, "run-b", questions=60, n=5, seed=2)
    out = tmp_path / "both.html"
    assert main(["report", str(a), str(b), "--out", str(out), "--questions", "5"]) == 0
    page = out.read_text()
    assert "run-a" in page and "run-b" in page and str(out) in capsys.readouterr().out
    tests, train = page.split('<h3 class="sub">Training questions')
    assert tests.count('<details class="q"') == 100
    assert tests.count('<div class="model">') == 2 * 5 * len(MODELS)
    sources = [len(load_yields(r)) for r in (a, b)]
    assert train.count('<div class="model">') == 5 * sum(sources) > 0  # --questions 5 each
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "run folder not found" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_ekt_run_ends_with_intervals_and_report(tmp_path, tiny_model_dir, data_dir, capsys):
    """The Runner hook on a real (tiny, random) model: all three outputs, rebuilt identically."""
    from ekt.evaluation.evaluate import EvalConfig
    from ekt.pipeline.config import RunConfig
    from ekt.pipeline.experiment import run_experiment
    from ekt.training.train import TrainConfig

    cfg = RunConfig(
        name="mini",
        data_dir=str(data_dir),
        teacher=str(tiny_model_dir),
        student=str(tiny_model_dir),
        methods=["supervised"],
        train_limit=2,
        device="cpu",
        evaluate_teacher=False,
        train=TrainConfig(
            warmup_steps=0, batch_size=2, per_device_train_batch_size=2, logging_steps=1
        ),
        eval=EvalConfig(limit=3, n=2, k=[1, 2], max_new_tokens=8, batch_size=4),
    )
    cfg.sandbox.workers = 1
    out = tmp_path / "run"
    results = run_experiment(cfg, out)
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    rows = {r["label"]: r for r in on_disk["rows"]}
    iv = rows["student-supervised"]["intervals"]["pass@2"]
    assert iv["questions"] == 3 and iv["low"] <= iv["estimate"] <= iv["high"]
    assert any("small sample: 3 questions" in n for n in on_disk["statistics"]["notes"])
    assert "[" in (out / "results.md").read_text()
    page = (out / "report.html").read_text()
    tests, train = page.split('<h3 class="sub">Training questions')
    assert "student-supervised" in tests and tests.count('<details class="q"') == 3
    assert train.count('<details class="q"') == 2  # train_limit: the reference programs' verdicts
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == page


# -- rendering in a real browser -------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """Chrome DevTools Protocol over --remote-debugging-pipe (fd 3 in, fd 4 out): stdlib only."""

    def __init__(self, binary: str, profile: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends become fds 3 and 4
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.time() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def drain(self, seconds: float) -> None:
        deadline = time.time() + seconds
        try:
            while True:
                self.events.append(self._read(deadline))
        except TimeoutError:
            pass

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def render_in_chromium(page: Path, screenshot: Path, width: int = 1400) -> dict:
    """Open ``page`` in headless Chromium; return problems seen, DOM counts and a screenshot."""
    binary = _chromium()
    assert binary
    dt = DevTools(binary, screenshot.parent / "chromium-profile")
    try:
        target = dt.call("Target.createTarget", url="about:blank")["targetId"]
        dt.session = dt.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            dt.call(f"{domain}.enable")
        dt.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=1000,
            deviceScaleFactor=1,
            mobile=False,
        )
        dt.call("Page.navigate", url=page.resolve().as_uri())
        dt.wait_for("Page.loadEventFired")
        dt.drain(0.5)
        counts = dt.evaluate(
            """({
              charts: document.querySelectorAll('svg.chart').length,
              lines: document.querySelectorAll('svg.chart polyline.series').length,
              tables: document.querySelectorAll('table').length,
              resultRows: document.querySelectorAll('table.results tbody tr').length,
              questions: document.querySelectorAll('details.q').length,
              imgs: document.querySelectorAll('img').length,
              scripts: document.querySelectorAll('script').length,
              pwned: window.__pwned || 0,
              countText: (document.querySelector('.f-count') || {}).textContent,
              width: document.documentElement.scrollWidth
            })"""
        )
        # Use the drill-down filter as a reader would.
        counts["disagreeText"] = dt.evaluate(
            """(function () {
              var box = document.querySelector('.drill');
              var sel = box.querySelector('.f-mode');
              sel.value = 'disagree';
              sel.dispatchEvent(new Event('change'));
              box.querySelector('.f-open').click();
              return box.querySelector('.f-count').textContent;
            })()"""
        )
        counts["openAfterFilter"] = dt.evaluate(
            "document.querySelectorAll('.drill details.q[open]').length"
        )
        dt.evaluate(
            "document.querySelector('.drill .f-close').click();"
            "var s = document.querySelector('.drill .f-mode'); s.value = 'all';"
            "s.dispatchEvent(new Event('change')); 0"
        )
        dt.drain(0.3)
        height = dt.call("Page.getLayoutMetrics")["cssContentSize"]["height"]
        shot = dt.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": min(height, 12000), "scale": 1},
        )
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        problems = []
        for ev in dt.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                problems.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                problems.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                problems.append(f"log: {p['entry'].get('text')}")
            elif m == "Network.requestWillBeSent":
                url = p.get("request", {}).get("url", "")
                if not url.startswith(("file:", "data:", "about:")):
                    problems.append(f"network request: {url}")
        return {"problems": problems, **counts}
    finally:
        dt.close()


@pytest.mark.slow
@pytest.mark.skipif(
    _chromium() is None,
    reason="no Chromium on PATH: install Debian's `chromium` (make test tries apt-get) "
    "to render report.html in a real browser",
)
def test_report_renders_in_headless_chromium(tmp_path, fake_data):
    a = make_run(tmp_path, "main-run", data_dir=fake_data)
    b = make_run(tmp_path, "small-run", questions=40, n=4, seed=3, rounds=False)
    page = build_report([a, b], out=tmp_path / "report.html")
    shot = tmp_path / "report.png"
    seen = render_in_chromium(page, shot)
    keep = os.environ.get("EKT_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    assert seen["problems"] == []  # no console errors, exceptions or network requests
    assert seen["pwned"] == 0 and seen["imgs"] == 0 and seen["scripts"] == 1
    # 2 runs x (2 interval charts + 1 paired + pass@k + loss) + yields, rounds
    assert seen["charts"] >= 11
    assert seen["lines"] >= 2 * len(MODELS)
    assert seen["tables"] >= 8 and seen["resultRows"] == 2 * (len(MODELS) + 1)
    trained = sum(y.questions for r in (a, b) for y in load_yields(r))
    assert trained > 0  # the training questions' drill-down is rendered too
    assert seen["questions"] == 160 + trained and seen["countText"] == "120 of 120 shown"
    shown = int(seen["disagreeText"].split()[0])
    assert 0 < shown < 120 and seen["openAfterFilter"] == shown
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    # Negative control: the same checks do catch a console error, an exception and a request.
    bad = tmp_path / "bad.html"
    bad.write_text(
        page.read_text().replace(
            "</body>",
            "<script>console.error('boom'); noSuchFunction();</script>"
            '<img src="http://127.0.0.1:9/x.png"></body>',
        )
    )
    problems = render_in_chromium(bad, tmp_path / "bad.png")["problems"]
    assert any("boom" in p for p in problems)
    assert any("noSuchFunction" in p for p in problems)
    assert any("network request: http://127.0.0.1:9/x.png" in p for p in problems)
