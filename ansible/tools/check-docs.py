#!/usr/bin/python3
"""Check that docs/deploy.md documents exactly the roles' variables.

The variables are the options of every entry point in
ansible/roles/*/meta/argument_specs.yml. docs/deploy.md holds their table
between the markers <!-- variables:begin --> and <!-- variables:end -->,
one row per variable: name, role, type, default, description, as
`--print` writes them. The check fails (exit 1) when

  - a variable of argument_specs has no row, or its row differs from what
    argument_specs says (type, default, description);
  - a row, or any mention anywhere in docs/deploy.md, names a shoal_* or
    redis_* variable that argument_specs does not have;
  - a role's defaults/main.yml sets a variable argument_specs lacks, or
    gives one another default than argument_specs says.

usage: check-docs.py [--print] [--repo DIR]
  --print   write the table generated from argument_specs to stdout
  --repo    the repository's root (default: two levels above this file)
"""

import json
import os
import re
import sys

try:
    import yaml
except ImportError:  # python3-yaml comes with ansible
    sys.exit("check-docs.py: needs PyYAML (Debian: python3-yaml)")

BEGIN, END = "<!-- variables:begin -->", "<!-- variables:end -->"
HEADER = [
    "| Variable | Role | Type | Default | Description |",
    "|---|---|---|---|---|",
]
# A variable mentioned in prose: shoal_x or redis_x not glued to a longer
# identifier (vault_redis_password is not a role variable).
MENTION = re.compile(r"(?<![A-Za-z0-9_])((?:shoal|redis)_[a-z0-9_]*[a-z0-9])(?![A-Za-z0-9_])")


def load_specs(repo):
    """{name: (role, spec)} over every role and entry point; main wins."""
    roles_dir = os.path.join(repo, "ansible", "roles")
    out = {}
    for role in sorted(os.listdir(roles_dir)):
        path = os.path.join(roles_dir, role, "meta", "argument_specs.yml")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        entries = doc.get("argument_specs", {})
        names = sorted(entries, key=lambda e: (e != "main", e))
        for entry in names:
            for name, spec in (entries[entry].get("options") or {}).items():
                out.setdefault(name, (role, spec))
    return out


def check_defaults(repo, specs):
    """Problems between each role's defaults/main.yml and its specs."""
    problems = []
    roles_dir = os.path.join(repo, "ansible", "roles")
    for role in sorted(os.listdir(roles_dir)):
        path = os.path.join(roles_dir, role, "defaults", "main.yml")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            defaults = yaml.safe_load(f) or {}
        for name, value in defaults.items():
            if name not in specs:
                problems.append(f"{name}: set in roles/{role}/defaults/main.yml, not in argument_specs")
                continue
            spec = specs[name][1]
            if spec.get("required"):
                problems.append(f"{name}: required in argument_specs, yet roles/{role}/defaults/main.yml sets it")
            elif " ".join(str(spec.get("default")).split()) != " ".join(str(value).split()):
                problems.append(f"{name}: default {spec.get('default')!r} in argument_specs, "
                                f"{value!r} in roles/{role}/defaults/main.yml")
        for name, (r, spec) in specs.items():
            if r == role and name not in defaults and not spec.get("required"):
                problems.append(f"{name}: has a default in argument_specs but none in roles/{role}/defaults/main.yml")
    return problems


def cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def flow(value):
    """A YAML flow rendering of a default, short enough for a table."""
    if isinstance(value, str):
        return json.dumps(value) if value == "" or value.strip() != value else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return str(value)


def row(name, role, spec):
    if spec.get("required"):
        default = "required (vault)" if spec.get("no_log") else "required"
    else:
        value = spec.get("default", "")
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            default = "<br>".join("`" + flow(v) + "`" for v in value)  # one per line
        else:
            default = "`" + flow(value) + "`"
    typ = spec.get("type", "str")
    if spec.get("elements"):
        typ += " of " + spec["elements"]
    if spec.get("choices"):
        typ += ": " + ", ".join(str(c) for c in spec["choices"])
    desc = spec.get("description", "")
    if isinstance(desc, list):
        desc = " ".join(desc)
    return f"| `{name}` | {role} | {cell(typ)} | {cell(default)} | {cell(desc)} |"


def norm(line):
    """A row without the spaces around its cells' bars."""
    return re.sub(r"\s*(?<!\\)\|\s*", "|", line.strip())


def table(specs):
    rows = [row(n, *specs[n]) for n in sorted(specs, key=lambda n: (specs[n][0] != "shoal", n))]
    return HEADER + rows


def main(argv):
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    args = list(argv)
    printing = "--print" in args
    if "--repo" in args:
        i = args.index("--repo")
        if i + 1 >= len(args):
            sys.exit(__doc__)
        repo = args[i + 1]
    specs = load_specs(repo)
    if not specs:
        sys.exit("check-docs.py: no options in ansible/roles/*/meta/argument_specs.yml")
    want = table(specs)
    if printing:
        print("\n".join(want))
        return 0

    doc_path = os.path.join(repo, "docs", "deploy.md")
    with open(doc_path, encoding="utf-8") as f:
        doc = f.read()
    problems = check_defaults(repo, specs)
    if BEGIN not in doc or END not in doc:
        problems.append(f"{doc_path}: no {BEGIN} ... {END} table")
        have_rows = []
    else:
        block = doc.split(BEGIN, 1)[1].split(END, 1)[0]
        have_rows = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]

    want_by_name = {}
    for ln in want[2:]:
        want_by_name[ln.split("`")[1]] = ln
    have_by_name = {}
    for ln in have_rows[2:] if have_rows[:2] == HEADER else have_rows:
        m = re.match(r"\|\s*`([^`]+)`", ln)
        if m:
            have_by_name[m.group(1)] = ln
    if have_rows and have_rows[:2] != HEADER:
        problems.append("the variables table's header differs from --print's")

    for name, ln in want_by_name.items():
        if name not in have_by_name:
            problems.append(f"{name}: in argument_specs, missing from the table")
        elif norm(have_by_name[name]) != norm(ln):
            problems.append(f"{name}: the table's row differs from argument_specs:\n    doc:  {have_by_name[name]}\n    spec: {ln}")
    for name in have_by_name:
        if name not in want_by_name:
            problems.append(f"{name}: in the table, not in any argument_specs")
    for name in sorted(set(MENTION.findall(doc))):
        if name not in specs:
            problems.append(f"{name}: mentioned in docs/deploy.md, not in any argument_specs")

    if problems:
        print("docs/deploy.md and argument_specs disagree (regenerate the table with "
              "`python3 ansible/tools/check-docs.py --print`):", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"docs/deploy.md documents the {len(specs)} variables of argument_specs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
