#!/usr/bin/env python3
"""A syntax check of a BitBake recipe where BitBake itself is not available (Debian 12 does not
package it), and a check of the recipe against the tree it builds.

  bb-check.py RECIPE [SOURCE-TREE]

Syntax, statement by statement as BitBake's parser takes them: comments; assignments with
every operator (=, ?=, ??=, :=, +=, =+, .=, =.), flags (VAR[flag]), overrides (VAR:append,
VAR:${PN}) and 'export'; values quoted, continued with a trailing backslash; inline Python
${@...} that must parse as a Python expression; inherit, include, require, addtask, deltask,
EXPORT_FUNCTIONS; shell functions (NAME() { ... }, the body checked with bash -n) and Python
functions (python NAME() { ... } and def, compiled).

Against the tree (when given): every -D option in EXTRA_OEMESON and PACKAGECONFIG is one of
meson_options.txt (or a meson built-in), every unit in SYSTEMD_SERVICE exists under systemd/,
and the classes meson, pkgconfig, systemd and useradd are inherited.

Prints one line per problem, "RECIPE:LINE: message", and exits 1 when there is any."""
import ast, os, re, subprocess, sys, tempfile

OPS = r"(\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)"
NAME = r"[A-Za-z0-9_\-\.\+/${}~]+(?::[A-Za-z0-9_\-\.\+/${}~]+)*"
ASSIGN = re.compile(r"^(export\s+)?(" + NAME + r")(\[[A-Za-z0-9_\-\.]+\])?\s*" + OPS + r"\s*(.*)$")
SHELL_FUNC = re.compile(r"^(fakeroot\s+)?(" + NAME + r")\s*\(\)\s*\{\s*$")
PY_FUNC = re.compile(r"^(fakeroot\s+)?python\s+(" + NAME + r")?\s*\(\)\s*\{\s*$")
DEF = re.compile(r"^def\s+[A-Za-z_][A-Za-z0-9_]*\s*\(.*\)\s*:\s*$")
DIRECTIVE = re.compile(r"^(inherit|include|require|addtask|deltask|EXPORT_FUNCTIONS|addhandler)\b(.*)$")

problems = []


def problem(line, msg):
    problems.append("%s:%d: %s" % (sys.argv[1], line, msg))


def check_inline_python(value, line):
    """Every ${@...} in value, braces balanced, must be a Python expression."""
    i = 0
    while True:
        i = value.find("${@", i)
        if i < 0:
            return
        depth, j = 1, i + 3
        while j < len(value) and depth:
            depth += {"{": 1, "}": -1}.get(value[j], 0)
            j += 1
        if depth:
            problem(line, "inline Python ${@ without its closing brace")
            return
        expr = value[i + 3:j - 1]
        try:
            ast.parse(expr, mode="eval")
        except SyntaxError as e:
            problem(line, "inline Python does not parse: %s: %s" % (expr, e.msg))
        i = j


def parse_value(lines, k):
    """The quoted value starting on lines[k] (after the operator); returns (value, next k)."""
    first = lines[k][1]
    text = first
    start = k
    # A line ending in a backslash continues the statement.
    while text.endswith("\\"):
        k += 1
        if k >= len(lines):
            problem(lines[start][0], "continuation runs past the end of the file")
            return None, k
        text = text[:-1] + lines[k][1]
    text = text.strip()
    if len(text) < 2 or text[0] not in "\"'" or text[-1] != text[0]:
        problem(lines[start][0], "value is not one quoted string: %s" % text[:60])
        return None, k + 1
    inner = text[1:-1]
    if text[0] in inner.replace("\\" + text[0], ""):
        problem(lines[start][0], "stray %s inside the value" % text[0])
    check_inline_python(inner, lines[start][0])
    return inner, k + 1


def main():
    recipe = sys.argv[1]
    tree = sys.argv[2] if len(sys.argv) > 2 else None
    with open(recipe, encoding="utf-8") as f:
        raw = f.read().split("\n")
    lines = list(enumerate(raw, 1))
    values, inherits, shell_funcs = {}, [], []
    k = 0
    while k < len(lines):
        no, text = lines[k]
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            k += 1
            continue
        m = SHELL_FUNC.match(text)
        p = PY_FUNC.match(text)
        if p or (m and not text.startswith("python")):
            body, k = [], k + 1
            while k < len(lines) and lines[k][1] != "}":
                body.append(lines[k][1])
                k += 1
            if k >= len(lines):
                problem(no, "function without its closing '}' at the start of a line")
                break
            if p:
                src = "\n".join(body)
                try:
                    compile("def _f():\n" + "\n".join("    " + b for b in body) + "\n    pass\n",
                            recipe, "exec")
                except SyntaxError as e:
                    problem(no + (e.lineno or 1) - 1, "Python function: %s" % e.msg)
            else:
                shell_funcs.append((no, m.group(2), body))
            k += 1
            continue
        if DEF.match(text):
            body, k = [text], k + 1
            while k < len(lines) and (lines[k][1].startswith((" ", "\t")) or not lines[k][1].strip()):
                body.append(lines[k][1])
                k += 1
            try:
                compile("\n".join(body), recipe, "exec")
            except SyntaxError as e:
                problem(no, "def: %s" % e.msg)
            continue
        d = DIRECTIVE.match(stripped)
        if d:
            if not d.group(2).strip():
                problem(no, "%s without arguments" % d.group(1))
            if d.group(1) == "inherit":
                inherits += d.group(2).split()
            k += 1
            continue
        a = ASSIGN.match(text)
        if a:
            lines[k] = (no, a.group(5))
            value, k = parse_value(lines, k)
            if value is not None:
                key = a.group(2) + (a.group(3) or "")
                values[key] = values.get(key, "") + " " + value if a.group(4) in ("+=", ".=") \
                    else value
            continue
        problem(no, "not a BitBake statement: %s" % stripped[:70])
        k += 1

    # Shell function bodies: bash must take them (BitBake runs them with /bin/sh; ${VAR} and
    # ${@...} expansions are BitBake's, and are valid shell syntax as they stand).
    for no, name, body in shell_funcs:
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as t:
            t.write("\n".join(re.sub(r"\$\{@[^}]*\}", "true", b) for b in body) + "\n")
        r = subprocess.run(["bash", "-n", t.name], capture_output=True, text=True)
        os.unlink(t.name)
        if r.returncode:
            problem(no, "shell function %s: %s" % (name, r.stderr.strip().replace(t.name, "body")))

    for var in ("SUMMARY", "LICENSE", "LIC_FILES_CHKSUM", "SRC_URI", "S"):
        if var not in values:
            problem(0, "%s is not set" % var)
    if tree:
        for cls in ("meson", "pkgconfig", "systemd", "useradd"):
            if cls not in inherits:
                problem(0, "class %s is not inherited" % cls)
        with open(os.path.join(tree, "meson_options.txt"), encoding="utf-8") as f:
            known = set(re.findall(r"option\('([^']+)'", f.read()))
        known |= {"prefix", "libdir", "bindir", "sysconfdir", "datadir", "buildtype", "b_lto",
                  "b_sanitize", "werror", "default_library", "wrap_mode"}
        meson_args = values.get("EXTRA_OEMESON", "")
        meson_args += " " + " ".join(v for key, v in values.items()
                                     if key.startswith("PACKAGECONFIG["))
        for opt in re.findall(r"-D([A-Za-z0-9_\-]+)=", meson_args):
            if opt not in known:
                problem(0, "meson option -D%s is not in meson_options.txt" % opt)
        for unit in values.get("SYSTEMD_SERVICE:${PN}", "").split():
            if not (os.path.exists(os.path.join(tree, "systemd", unit)) or
                    os.path.exists(os.path.join(tree, "systemd", unit + ".in"))):
                problem(0, "SYSTEMD_SERVICE names %s, which systemd/ does not have" % unit)
        if "USERADD_PARAM:${PN}" not in values:
            problem(0, "USERADD_PARAM:${PN} is not set: the service user is not made")

    for p in problems:
        print(p)
    print("%s: %d statement(s) checked, %d problem(s)" % (recipe, len(values), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
