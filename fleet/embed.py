"""Copy fleet/bootstrap.sh into template.yaml's UserData (CloudFormation cannot read a file at deploy time).

python fleet/embed.py          # rewrite the embedded copy
python fleet/embed.py --check  # exit 1 when the copy differs from the file (tests/test_bootstrap.py checks too)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "fleet" / "bootstrap.sh"
TEMPLATE = ROOT / "template.yaml"
BEGIN, END = "# BEGIN fleet/bootstrap.sh", "# END fleet/bootstrap.sh"


def embedded(template: str, script: str) -> str:
    """template.yaml with the literal block between the markers replaced by `script`."""
    lines = template.splitlines(keepends=True)
    begin = next(i for i, line in enumerate(lines) if line.strip() == BEGIN)
    end = next(i for i, line in enumerate(lines) if line.strip() == END and i > begin)
    item = lines[begin + 1]
    if item.strip() != "- |":
        raise SystemExit(f"template.yaml: expected '- |' after {BEGIN}")
    indent = " " * (len(item) - len(item.lstrip()) + 2)
    body = [indent + line if line.strip() else "\n" for line in script.splitlines(keepends=True)]
    return "".join([*lines[: begin + 2], *body, *lines[end:]])


def main(argv: list[str]) -> int:
    current = TEMPLATE.read_text()
    wanted = embedded(current, SCRIPT.read_text())
    if "--check" in argv:
        if current != wanted:
            print("template.yaml's UserData differs from fleet/bootstrap.sh: run python fleet/embed.py")
            return 1
        return 0
    TEMPLATE.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
