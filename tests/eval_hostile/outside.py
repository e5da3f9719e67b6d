import os
escaped = False
for p in ["@OUTSIDE@/written-by-sandbox", "/tmp/codemoe-hostile-escape", "/var/tmp/codemoe-hostile-escape"]:
    try:
        with open(p, "w") as f:
            f.write("escaped")
        escaped = escaped or p.startswith("@OUTSIDE@")
    except OSError:
        pass
# a pass only if the test's directory outside the sandbox could be written
# (a private /tmp may take the others: the test checks the real ones)
raise SystemExit(0 if escaped else 1)
