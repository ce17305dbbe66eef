# preguard's tasks. `just` comes with the dev extra: .venv/bin/just
set shell := ["bash", "-euo", "pipefail", "-c"]
venv := justfile_directory() / ".venv/bin"

# build the hook (glibc and musl) into the package
build:
    make -C hook install LIBDIR={{justfile_directory()}}/services/preguard/probe/_lib

# lint and type-check, then every test
test *ARGS: build lint
    {{venv}}/python -m pytest -q -ra {{ARGS}}

# ruff and mypy --strict on proto/ and services/
lint:
    {{venv}}/ruff check proto services tests hatch_build.py
    {{venv}}/ruff format --check proto services tests hatch_build.py
    {{venv}}/mypy --strict proto/preguard services/preguard

# every benchmark, one table
bench: build
    {{venv}}/python -m bench

# the whole system on this machine
up *ARGS: build
    {{venv}}/preguard up {{ARGS}}

# regenerate the committed JSON Schemas
schema:
    {{venv}}/preguard schema
