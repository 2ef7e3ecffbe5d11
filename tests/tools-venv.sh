# shellcheck shell=bash
# Sourced (not run) by tests/helm/check and tests/lint-dockerfile, from the repository root:
# installs the pinned tools of tests/tools-requirements.txt into ./.venv, the venv tests/run
# also uses, when that file changed since the last install, and puts the venv's bin first on PATH.
tools_venv() {
    local venv=.venv
    local requirements=tests/tools-requirements.txt
    local stamp="$venv/.tools-requirements"
    if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
        echo "== installing the pinned tools into $venv ($(grep -v '^#' "$requirements" | tr '\n' ' '))"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        cp "$requirements" "$stamp"
    fi
    PATH="$PWD/$venv/bin:$PATH"
    export PATH
}
