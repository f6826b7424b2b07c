# Discovery: list every session of the configured projects.
#
# The checkpoint reruns only when the archive's state token changes (a cheap
# listing), so an unchanged archive means nothing to do and `snakemake -n`
# shows the real plan. Per-session manifests are rewritten on every
# discovery, but Snakemake compares small inputs by checksum, so only sessions
# whose content changed are recomputed.


checkpoint discover:
    output:
        directory=directory(DISCOVERY),
        index=f"{DISCOVERY}/sessions.tsv",
    log:
        "logs/discover.log",
    localrule: True
    conda:
        "../envs/qmroct.yaml"
    params:
        state=lambda wildcards: archive_state(),
    script:
        "../scripts/discover.py"


def archive_state():
    from qmroct.discovery import archive_state_token
    from qmroct.usererrors import stop_plainly_on_archive_error

    # a wrong password or an unreachable server: one line, not InputFunctionException
    with stop_plainly_on_archive_error():
        return archive_state_token(config)
