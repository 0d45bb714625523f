"""Writers for `kvplan check` reports: JUnit XML, GitHub workflow annotations, Markdown, JSON.

Each takes a `CheckReport` and returns text; nothing here prints or writes files.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from kvplan.plan.gating import BudgetResult, CheckReport, DeploymentResult, format_value
from kvplan.cli.render import markdown_table
from kvplan.units import counted

HEADERS = ["deployment", "budget", "value", "limit", "result"]


def row(d: DeploymentResult, b: BudgetResult) -> list[str]:
    """One table row: deployment, budget, value, 'op limit', PASS/FAIL."""
    value = format_value(b.value, b.unit) if b.value is not None else f"— ({b.note})"
    return [d.name, b.budget, value, f"{b.comparison} {format_value(b.limit, b.unit)}", "PASS" if b.passed else "FAIL"]


def summary(report: CheckReport) -> str:
    """'3 deployments, 12 budgets: all pass' / '... 2 fail'."""
    total = len(report.results)
    head = f"{counted(len(report.deployments), 'deployment')}, {counted(total, 'budget')}"
    return f"{head}: all pass" if report.passed else f"{head}: {report.failed} fail"


def to_json(report: CheckReport) -> str:
    from kvplan.schema import stamped

    return json.dumps(stamped(report.to_dict()), indent=2)


def to_markdown(report: CheckReport) -> str:
    """A heading with the verdict and one table row per (deployment, budget), for a review comment."""
    mark = "✅" if report.passed else "❌"
    text = f"### {mark} kvplan check `{report.plan}`: {summary(report)}\n\n"
    rows = [row(d, b)[:4] + [("✅ pass" if b.passed else "❌ **FAIL**")] for d, b in report.results]
    return text + markdown_table(HEADERS, rows)


def to_junit(report: CheckReport) -> str:
    """One <testsuite>; one <testcase> per (deployment, budget); a failure carries value and limit."""
    results = report.results
    suites = ET.Element("testsuites", name="kvplan check", tests=str(len(results)), failures=str(report.failed), errors="0")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"kvplan check {report.plan}",
        tests=str(len(results)),
        failures=str(report.failed),
        errors="0",
        skipped="0",
        time="0",
    )
    for d, b in results:
        attrs = {"classname": d.name, "name": b.budget, "file": report.plan, "time": "0"}
        if b.line is not None:
            attrs["line"] = str(b.line)
        case = ET.SubElement(suite, "testcase", attrs)
        if not b.passed:
            failure = ET.SubElement(case, "failure", message=b.message, type="budget")
            failure.text = (
                f"deployment: {d.name} ({d.model} on {d.gpu or 'no GPU'}, tp {d.tp}, pp {d.pp}, "
                f"context {d.context:,}, batch {d.batch}, KV {d.kv_cache_dtype})\n"
                f"value: {b.value if b.value is not None else 'absent: ' + str(b.note)} {b.unit}\n"
                f"limit: {b.comparison} {b.limit} {b.unit}\n"
            )
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{b.metric} = {format_value(b.value, b.unit)} ({b.comparison} {format_value(b.limit, b.unit)})"
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _escape_data(text: str) -> str:
    """GitHub workflow-command message escaping (actions/toolkit `escapeData`)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """Property escaping (actions/toolkit `escapeProperty`): also ':' and ','."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(report: CheckReport) -> str:
    """`::error file=...,line=N,title=...::message` per failed budget, then one `::notice` summary.

    Passes get no annotation: GitHub shows at most 10 errors and 10 notices per step,
    and a pass needs no reviewer's attention.
    """
    lines = []
    for d, b in report.results:
        if b.passed:
            continue
        props = [f"file={_escape_property(report.plan)}"]
        if b.line is not None:
            props.append(f"line={b.line}")
        props.append(f"title={_escape_property(f'kvplan budget failed: {d.name}')}")
        lines.append(f"::error {','.join(props)}::{_escape_data(f'{d.name}: {b.message}')}")
    lines.append(f"::notice file={_escape_property(report.plan)}::{_escape_data('kvplan check: ' + summary(report))}")
    return "\n".join(lines) + "\n"


_PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<message>.*)$")


def github_problems(message: str, plan: str) -> str:
    """An invalid plan's `file:line: key: message` lines as `::error` annotations on those lines."""
    lines = []
    for problem in message.splitlines():
        match = _PROBLEM.match(problem)
        if match and match.group("file") == plan:
            props = f"file={_escape_property(plan)},line={match.group('line')},title=kvplan invalid plan"
            lines.append(f"::error {props}::{_escape_data(match.group('message'))}")
        else:
            lines.append(f"::error file={_escape_property(plan)},title=kvplan invalid plan::{_escape_data(problem)}")
    return "\n".join(lines) + "\n"


def invalid_plan_report(fmt: str, plan: str, message: str) -> str:
    """The --output report of a plan that could not be checked, in `fmt` (json, junit, markdown,
    github, table): it replaces an earlier report, so no stale verdict is left behind."""
    if fmt == "json":
        from kvplan.schema import stamped

        data = {"plan": plan, "passed": False, "summary": "invalid plan", "error": message, "deployments": []}
        return json.dumps(stamped(data), indent=2) + "\n"
    if fmt == "junit":
        suites = ET.Element("testsuites", name="kvplan check", tests="1", failures="0", errors="1")
        suite = ET.SubElement(suites, "testsuite", name=f"kvplan check {plan}", tests="1", failures="0", errors="1",
                              skipped="0", time="0")
        case = ET.SubElement(suite, "testcase", classname="plan", name="valid plan", file=plan, time="0")
        error = ET.SubElement(case, "error", message=message.splitlines()[0] if message else "invalid plan", type="invalid plan")
        error.text = message + "\n"
        ET.indent(suites)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    if fmt == "markdown":
        return f"### ❌ kvplan check `{plan}`: invalid plan\n\n```\n{message}\n```\n"
    if fmt == "github":
        return github_problems(message, plan)
    return f"kvplan check {plan}: invalid plan\n{message}\n"
