# Deterministic "algorithm": result depends only on the input text and the algorithm name.
import hashlib
import json
import os
import sys
import time

sm = snakemake  # noqa: F821
text = open(sm.input[0]).read()
fail_on = os.environ.get("SMOS_TEST_FAIL", "")
if fail_on and fail_on == f"{sm.wildcards.s}/{sm.wildcards.a}":
    with open(sm.log[0], "w") as f:
        f.write("algorithm exploded on purpose\n")
    sys.exit(3)
time.sleep(float(sm.params.sleep))
token = os.environ.get("SMOS_TEST_TOKEN", "")
res = {
    "sample": sm.wildcards.s,
    "algo": sm.wildcards.a,
    "value": int(hashlib.sha256((text + sm.wildcards.a).encode()).hexdigest()[:8], 16),
    "token_sha": hashlib.sha256(token.encode()).hexdigest() if token else None,
}
with open(sm.output[0], "w") as f:
    json.dump(res, f, sort_keys=True)
with open(sm.log[0], "w") as f:
    f.write(f"ran on {os.environ.get('NOVA_INSTANCE_UUID', 'local')} in {os.getcwd()}\n")
