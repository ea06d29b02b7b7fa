"""`adaptercar check` on the `companion:` section: every problem at its config line, found
before the sidecar runs (not as a render that fails every second once deployed)."""

from __future__ import annotations

from pathlib import Path

from tests.test_check import ROOT, check

CONFIG = """\
admin: {}
backends:
  ledger:
    line: {address: "127.0.0.1:7000", framing: {delimiter: "\\r\\n"}}
  crm:
    soap: {wsdl: "WSDL"}
companion:
  logs:
    - path: nowhere/app.log
    - path: logs/app.log
  stats:
    - backend: crm
      request: STATS
      response: {until: '^\\.$', each: {match: '^(?P<name>\\w+)=(?P<value>\\S+)$'}}
    - backend: nope
      request: STATS
      response: {until: '^\\.$', each: {match: '^(?P<name>\\w+)=(?P<value>\\S+)$'}}
  config:
    - template: ok.tpl
      values: [values/, gone/, notdir]
      output: out.conf
      on_change: {restart: crm}
    - template: missing_key.tpl
      values: [values/]
      output: out2.conf
      on_change: {restart: ledgr}
    - template: bad.tpl
      output: out3.conf
    - template: nofile.tpl
      output: out4.conf
    - template: ok.tpl
      values: [values/]
      output: out5.conf
      on_change: {restart: ledger}
    - template: env.tpl
      output: out6.conf
"""


def _project(tmp: Path) -> Path:
    (tmp / "values").mkdir()
    (tmp / "values" / "a").write_text("1\n")
    (tmp / "values" / ".hidden").write_text("not a key\n")
    (tmp / "logs").mkdir()
    (tmp / "notdir").write_text("a file, not a folder\n")
    (tmp / "ok.tpl").write_text("a={a}\n")
    (tmp / "missing_key.tpl").write_text("a={a} b={b}\n")
    (tmp / "bad.tpl").write_text("a={a|trim}\n")
    (tmp / "env.tpl").write_text("home={env.COMPANION_CHECK_HOME}\n")
    wsdl = ROOT / "legacy_fixtures" / "crm" / "crm.wsdl"
    (tmp / "adaptercar.yaml").write_text(CONFIG.replace("WSDL", str(wsdl)))
    return tmp


def test_every_companion_problem_is_reported_at_its_line(tmp_path: Path) -> None:
    r = check("adaptercar.yaml", _project(tmp_path))
    assert r.code == 1, r.text
    assert r.out == [
        "adaptercar.yaml:9: companion.logs[0].path: note: no such folder: nowhere "
        "(nothing is read until app.log appears there)",
        "adaptercar.yaml:20: companion.config[0].values[1]: note: no such folder: gone "
        "(rendering fails until it exists)",
    ], r.text
    assert r.err == [
        "adaptercar.yaml:12: companion.stats[0].backend: stats need a line or process backend; "
        "'crm' is SOAP",
        "adaptercar.yaml:15: companion.stats[1].backend: unknown backend 'nope' "
        "(expected one of: crm, ledger)",
        "adaptercar.yaml:20: companion.config[0].values[2]: not a folder: notdir "
        "(a values folder holds one file per key)",
        "adaptercar.yaml:22: companion.config[0].on_change.restart: 'crm' is a SOAP backend: it "
        "keeps no connections or children to restart (expected a line or process backend)",
        "adaptercar.yaml:23: companion.config[1].template: {b}: no value file 'b' in the values "
        "folders (keys: a)",
        "adaptercar.yaml:26: companion.config[1].on_change.restart: unknown backend 'ledgr' "
        "(did you mean 'ledger'?)",
        "adaptercar.yaml:27: companion.config[2].template: the template does not compile: "
        "{a|trim}: unknown filter 'trim' (expected one of: len, upper, lower)",
        "adaptercar.yaml:29: companion.config[3].template: no such file: nofile.tpl",
        "adaptercar.yaml:35: companion.config[5].template: the template does not compile: "
        "{env.COMPANION_CHECK_HOME}: environment variable COMPANION_CHECK_HOME is not set",
        "9 problem(s) found in adaptercar.yaml",
    ], r.text


def test_the_same_section_fixed_passes_and_notes_do_not_fail(tmp_path: Path) -> None:
    project = _project(tmp_path)
    config = project / "adaptercar.yaml"
    text = config.read_text()
    text = text.replace("    - backend: crm\n", "    - backend: ledger\n")
    text = text.replace("    - backend: nope\n", "    - backend: ledger\n")
    text = text.replace("template: ok.tpl\n      values: [values/, gone/, notdir]",
                        "template: both.tpl\n      values: [values/, gone/]")
    text = text.replace("{restart: crm}", "{restart: ledger}").replace("ledgr", "ledger")
    config.write_text(text)
    (project / "missing_key.tpl").write_text("a={a}\n")
    (project / "both.tpl").write_text("a={a}\n")  # a key check waits for every folder
    (project / "bad.tpl").write_text("{env.COMPANION_CHECK_HOME|upper}\n")
    (project / "nofile.tpl").write_text("constant\n")
    r = check("adaptercar.yaml", project, COMPANION_CHECK_HOME="/home/legacy")
    assert r.code == 0, r.text
    assert r.err == []
    assert r.out[:2] == [
        "adaptercar.yaml:9: companion.logs[0].path: note: no such folder: nowhere "
        "(nothing is read until app.log appears there)",
        "adaptercar.yaml:20: companion.config[0].values[1]: note: no such folder: gone "
        "(rendering fails until it exists)",
    ], r.text
    assert r.out[2].startswith("adaptercar.yaml: OK"), r.text
    # the folder appears: the note goes; a key in it is known from then on
    (project / "gone").mkdir()
    (project / "gone" / "b").write_text("2\n")
    (project / "both.tpl").write_text("a={a} b={b}\n")
    (project / "nowhere").mkdir()
    r = check("adaptercar.yaml", project, COMPANION_CHECK_HOME="/home/legacy")
    assert r.code == 0 and len(r.out) == 1, r.text
    (project / "both.tpl").write_text("a={a} b={b} c={c}\n")
    r = check("adaptercar.yaml", project, COMPANION_CHECK_HOME="/home/legacy")
    assert r.err == ["adaptercar.yaml:19: companion.config[0].template: {c}: no value file 'c' in "
                     "the values folders (keys: a, b)",
                     "1 problem(s) found in adaptercar.yaml"], r.text
