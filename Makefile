# omega-qvla-ros developer entry points. Every target that can touch rclpy runs with
# DDS confined to loopback and a random domain, so Fast DDS never multicasts onto
# the network.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python

export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
ROS_DOMAIN_ID ?= $(shell $(PY) -c 'import random; print(random.randint(1, 100))')
export ROS_DOMAIN_ID
export PYTHONUNBUFFERED := 1

.PHONY: setup test bench clean-venv

setup: $(VENV)/.stamp

# Idempotent: re-runs only when the requirements or setup.py change.
$(VENV)/.stamp: requirements/dev.txt setup.py setup.cfg
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements/dev.txt
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: setup
	$(VPY) -m pytest -q test

bench: setup
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements/bench.txt
	$(VENV)/bin/omega-qvla bench quant --json > bench/results/quant.json.tmp
	mv bench/results/quant.json.tmp bench/results/quant.json
	$(VPY) bench/make_table.py

clean-venv:
	rm -rf $(VENV)
