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
export MUJOCO_GL ?= egl

.PHONY: setup test bench bench-eval demo clean-venv

# the calibration size of the committed evaluation tables (eval's default before 2026-12-04;
# a later --calib-episodes / --calib-frames on the same line overrides it)
CALIB10 = --calib-episodes 2 --calib-frames 5

setup: $(VENV)/.stamp

# Idempotent: re-runs only when the requirements or setup.py change.
$(VENV)/.stamp: requirements/dev.txt setup.py setup.cfg
	@# offscreen rendering of the simulator needs EGL (Mesa): install it when missing
	@if ! ldconfig -p | grep -q 'libEGL.so.1'; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libegl1 libgl1-mesa-dri libgles2; \
	  else echo "warning: libEGL missing; install libegl1 libgl1-mesa-dri for simulator rendering" >&2; fi; fi
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements/dev.txt
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: setup
	$(VPY) -m pytest -q --durations=15 test

bench: setup
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements/bench.txt
	$(VENV)/bin/omega-qvla bench quant --json > bench/results/quant.json.tmp
	mv bench/results/quant.json.tmp bench/results/quant.json
	$(VENV)/bin/omega-qvla bench models --json > bench/results/models_tiny.json.tmp
	mv bench/results/models_tiny.json.tmp bench/results/models_tiny.json
	for f in pi05 gr00t; do for s in tiny small full; do \
	  $(VENV)/bin/omega-qvla memory --family $$f --size $$s --recipe omega_qvla --json > bench/results/memory_$${f}_$${s}.json; done; done
	$(VENV)/bin/omega-qvla bench policy --json > bench/results/policy.json.tmp
	mv bench/results/policy.json.tmp bench/results/policy.json
	$(VENV)/bin/omega-qvla bench policy --family gr00t --json > bench/results/policy_gr00t.json.tmp
	mv bench/results/policy_gr00t.json.tmp bench/results/policy_gr00t.json
	$(VPY) bench/tf32x3_rotation_codes.py --out bench/results/tf32x3_rotation_codes.json
	$(VPY) bench/profile_chunk.py --w4a4 models/pi05_small_aloha_w4a4 --fp models/pi05_small_aloha --chunks 5 \
	  --out bench/results/profile_small_pi05.json
	$(VPY) bench/make_table.py

# Closed-loop success of the shipped models per recipe (about half an hour per family on 2 cores),
# the default under the node's latency, and where W4A4 loses the policy (bench sensitivity)
EVAL_RECIPES := fp16,rtn,smoothquant,hadamard,omega_qvla,omega_qvla_outrot,omega_qvla_dynamic,omega_qvla_paper,omega_qvla_pertoken,omega_qvla_noperstep,omega_qvla_int
EVAL_FAMILIES := pi05 gr00t
bench-eval: setup
	for f in $(EVAL_FAMILIES); do \
	  $(VENV)/bin/omega-qvla eval $(CALIB10) --family $$f --recipes $(EVAL_RECIPES) --episodes 50 --workers 2 \
	    --out bench/results/eval_$$f.json || exit 1; \
	  $(VENV)/bin/omega-qvla bench sensitivity --family $$f --episodes 20 --rollouts 3 \
	    --svg bench/results/sensitivity_$$f.svg --out bench/results/sensitivity_$$f.json || exit 1; done
	$(VENV)/bin/omega-qvla eval $(CALIB10) --family pi05 --recipes fp16,omega_qvla --tasks transfer_cube --episodes 50 \
	  --workers 2 --execute-horizon 50 --replan-every 25 --blend crossfade --latency 0.35 \
	  --out bench/results/eval_pi05_latency.json
	$(VENV)/bin/omega-qvla eval $(CALIB10) --family gr00t --recipes fp16,omega_qvla --tasks transfer_cube --episodes 50 \
	  --workers 2 --blend crossfade --latency 0.15 --out bench/results/eval_gr00t_latency.json
	@# temporal ensembling: a new chunk every 2 steps, overlaps averaged (new chunk's weight 0.2)
	$(VENV)/bin/omega-qvla eval $(CALIB10) --family pi05 --recipes fp16,omega_qvla,rtn --tasks transfer_cube --episodes 50 \
	  --replan-every 2 --blend average --blend-new-weight 0.2 --workers 2 --out bench/results/eval_pi05_ensemble.json
	$(VENV)/bin/omega-qvla eval $(CALIB10) --family gr00t --recipes fp16,omega_qvla --tasks transfer_cube --episodes 50 \
	  --replan-every 2 --blend average --blend-new-weight 0.2 --workers 2 --out bench/results/eval_gr00t_ensemble.json
	@# the same under 50 ms of inference latency, a new chunk every 3 steps (what a ~50 ms W4A4 inference allows)
	$(VENV)/bin/omega-qvla eval $(CALIB10) --family pi05 --recipes fp16,omega_qvla --tasks transfer_cube --episodes 50 \
	  --latency 0.05 --replan-every 3 --blend average --blend-new-weight 0.2 --workers 2 \
	  --out bench/results/eval_pi05_ensemble_latency.json
	@# the default fine-tuned on the simulator's narrower top camera (cam_table): chunks of 25 and ensembled
	$(VENV)/bin/omega-qvla eval $(CALIB10) --model models/pi05_small_aloha_cam_table --recipes fp16,omega_qvla,rtn \
	  --tasks transfer_cube --episodes 50 --workers 2 --out bench/results/eval_pi05_cam_table.json
	$(VENV)/bin/omega-qvla eval $(CALIB10) --model models/pi05_small_aloha_cam_table --recipes fp16,omega_qvla,rtn \
	  --tasks transfer_cube --episodes 50 --replan-every 2 --blend average --blend-new-weight 0.2 --workers 2 \
	  --out bench/results/eval_pi05_cam_table_ensemble.json
	$(VENV)/bin/omega-qvla eval $(CALIB10) --model models/pi05_small_aloha_cam_table --recipes omega_qvla \
	  --tasks transfer_cube --episodes 50 --replan-every 2 --blend average --blend-new-weight 0.2 --workers 2 \
	  --calib-source policy --out bench/results/eval_pi05_cam_table_ensemble_calib_policy.json
	$(VENV)/bin/omega-qvla bench sensitivity --model models/pi05_small_aloha_cam_table --episodes 12 --rollouts 3 \
	  --replan-every 2 --blend average --blend-new-weight 0.2 --parts "all,weights only (A16),backbone,action head" \
	  --svg bench/results/sensitivity_pi05_cam_table.svg --out bench/results/sensitivity_pi05_cam_table.json
	$(VPY) bench/activation_sensitivity.py --model models/pi05_small_aloha_cam_table --replan-every 2 \
	  --blend average --blend-new-weight 0.2 --out bench/results/activation_sensitivity_pi05_cam_table.json
	@# the GR00T model fine-tuned on cam_table (whole 16-action chunks: ensembling hurts it in FP)
	$(VENV)/bin/omega-qvla eval $(CALIB10) --model models/gr00t_small_aloha_cam_table --recipes fp16,omega_qvla,rtn \
	  --tasks transfer_cube --episodes 50 --workers 2 --out bench/results/eval_gr00t_cam_table.json
	$(VENV)/bin/omega-qvla bench sensitivity --model models/gr00t_small_aloha_cam_table --episodes 20 --rollouts 3 \
	  --svg bench/results/sensitivity_gr00t_cam_table.svg --out bench/results/sensitivity_gr00t_cam_table.json
	$(VPY) bench/activation_sensitivity.py --model models/gr00t_small_aloha_cam_table \
	  --out bench/results/activation_sensitivity_gr00t_cam_table.json
	mkdir -p build/draws_gr00t
	for s in 90000 90100 90200 90300 90400 90500; do \
	  $(VENV)/bin/omega-qvla eval --model models/gr00t_small_aloha_cam_table --recipes omega_qvla --tasks transfer_cube \
	    --episodes 50 --workers 2 --calib-episodes 4 --calib-frames 10 --calib-seed $$s \
	    --out build/draws_gr00t/expert40_$$s.json || exit 1; done
	$(VPY) bench/calibration_draws.py --recipes omega_qvla bench/results/eval_gr00t_cam_table.json build/draws_gr00t/*.json \
	  --out bench/results/calibration_draws_gr00t_cam_table.json
	@# the same W4A4 evaluation over calibration draws (seeds 90100, 90200, ...), expert and on-policy
	mkdir -p build/draws
	for s in 90100 90200 90300 90400; do for src in expert policy; do \
	  $(VENV)/bin/omega-qvla eval $(CALIB10) --model models/pi05_small_aloha_cam_table --recipes omega_qvla \
	    --tasks transfer_cube --episodes 50 --replan-every 2 --blend average --blend-new-weight 0.2 --workers 2 \
	    --calib-source $$src --calib-seed $$s --out build/draws/$${src}_$$s.json || exit 1; done; done
	for s in 90000 90100 90200 90300 90400 90500; do \
	  $(VENV)/bin/omega-qvla eval $(CALIB10) --model models/pi05_small_aloha_cam_table --recipes omega_qvla \
	    --tasks transfer_cube --episodes 50 --replan-every 2 --blend average --blend-new-weight 0.2 --workers 2 \
	    --calib-episodes 4 --calib-frames 10 --calib-seed $$s --out build/draws/expert40_$$s.json || exit 1; done
	for s in 90000 90100 90200 90300 90400 90500; do \
	  $(VENV)/bin/omega-qvla eval $(CALIB10) --model models/pi05_small_aloha_cam_table --recipes omega_qvla \
	    --tasks transfer_cube --episodes 50 --replan-every 2 --blend average --blend-new-weight 0.2 --workers 2 \
	    --calib-episodes 8 --calib-frames 10 --calib-seed $$s --out build/draws/expert80_$$s.json || exit 1; done
	$(VPY) bench/calibration_draws.py --recipes omega_qvla bench/results/eval_pi05_cam_table_ensemble.json \
	  bench/results/eval_pi05_cam_table_ensemble_calib_policy.json build/draws/*.json \
	  --out bench/results/calibration_draws_pi05_cam_table.json
	@# does the offline action error (on the FP policy's own states) rank those draws by success?
	$(VPY) bench/calibration_offline_error.py bench/results/calibration_draws_pi05_cam_table.json \
	  --model models/pi05_small_aloha_cam_table --replan-every 2 --blend average --blend-new-weight 0.2 \
	  --out bench/results/calibration_offline_error_pi05_cam_table.json
	@# calibration on the FP policy's own rollouts vs the expert's (same seeds, transfer-cube only)
	for f in $(EVAL_FAMILIES); do \
	  $(VENV)/bin/omega-qvla eval $(CALIB10) --family $$f --recipes omega_qvla,omega_qvla_dynamic --tasks transfer_cube \
	    --episodes 50 --calib-source policy --out bench/results/eval_$${f}_calib_policy.json || exit 1; done
	$(VENV)/bin/omega-qvla eval $(CALIB10) --family pi05 --recipes omega_qvla,omega_qvla_dynamic --tasks transfer_cube \
	  --episodes 50 --calib-source policy --calib-episodes 8 --calib-frames 8 --out bench/results/eval_pi05_calib_policy64.json
	$(VENV)/bin/omega-qvla eval $(CALIB10) --family pi05 --recipes omega_qvla,omega_qvla_dynamic --tasks transfer_cube \
	  --episodes 50 --calib-source expert --calib-episodes 8 --calib-frames 8 --out bench/results/eval_pi05_calib_expert64.json
	$(VPY) bench/make_table.py

# The main job: quantize the shipped default model (models/pi05_small_aloha, FP16) with
# Omega-QVLA W4A4 calibrated on the demo bag, replay the bag offline through FP / W4A4 /
# RTN and live through the real node in shadow mode over loopback DDS, print the report.
DEMO := build/demo
demo: setup
	mkdir -p $(DEMO)
	$(VENV)/bin/omega-qvla quantize --recipe omega_qvla --calib test/data/demo_bag \
	  --out $(DEMO)/pack_w4a4 --json > $(DEMO)/quantize.json
	$(VENV)/bin/omega-qvla replay test/data/demo_bag --compare fp16,omega_qvla,rtn \
	  --live --pack $(DEMO)/pack_w4a4 --report $(DEMO)/report

clean-venv:
	rm -rf $(VENV)
