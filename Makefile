# stationcast: the commands a user and CI need. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Other machines: `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` keeps torch CPU-only;
# GPU hosts: `make install TORCH_INDEX=https://download.pytorch.org/whl/cu128` (see README).
TORCH_INDEX ?=
PIP_TORCH := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
PYTEST_ARGS ?=
ARGS ?=

.PHONY: help install run test lint bench bench-render pretrained pretrained-10min data deploy deploy-local clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PIP_TORCH) torch==2.13.0
	$(BIN)/pip install -q $(PIP_TORCH) -e '.[train,demo,dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv with the project, every extra (train, demo, dev) and pinned dependencies

run: install  ## the main job: embedded broker, replay of real NY airport records, forecasts, /status, live line
	$(BIN)/stationcast run $(ARGS)

test: install  ## the test suite (real broker, SQLite, PostgreSQL, Prometheus; real station data from ../shared)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install  ## ruff, and the import layering (import-linter contracts in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: install  ## all benchmarks, results written to docs/ (long: tens of minutes on CPU)
	$(BIN)/python -m bench.seed_table
	$(BIN)/python -m bench.accuracy_floor
	$(BIN)/python -m bench.long_sequence
	$(BIN)/python -m bench.transfer
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.forecast_batch
	$(BIN)/python -m bench.retrain_latency
	$(BIN)/python -m bench.lifecycle_transfer
	$(BIN)/python -m bench --render

bench-render: install  ## rewrite the benchmark pages and docs/index.md from docs/results/*.json (no measuring)
	$(BIN)/python -m bench --render

pretrained: install  ## retrain the shipped default model (Jena + NOAA records, not the NY replay data)
	rm -rf var/pretrain && $(BIN)/stationcast train \
	  --data ../shared/data/jena_2009_2016_hourly.csv.gz \
	  --data ../shared/data/noaa_chicago_ohare_2010_2016_hourly.csv.gz \
	  --data ../shared/data/noaa_denver_2010_2016_hourly.csv.gz \
	  --data ../shared/data/noaa_great_falls_2010_2016_hourly.csv.gz \
	  --data ../shared/data/noaa_rapid_city_2010_2016_hourly.csv.gz \
	  --features T,Tdew,rh,wv --time-features --phase-relative --anchor both --relative T,Tdew,wv --window-scale \
	  --band-offsets \
	  --horizons 1-24 --quantiles 0.1,0.5,0.9 --split 0.75,0.15 \
	  --lookback 168 --hidden 64 --dropout 0.2 --optimizer adam --lr 1e-3 --epochs 12 --steps-per-epoch 400 \
	  --patience 3 --conv 32x5/3,32x5/2 --registry var/pretrain --plots docs/figures/pretrained --promote
	rm -rf pipeline/pretrained_models/global && cp -r var/pretrain/global/v0001 pipeline/pretrained_models/global
	$(BIN)/python -m forecaster.artifact pipeline/pretrained_models/global

# The 10-minute model: the shipped hourly one behind a cadence adapter (6 readings -> 1 hourly step); the adapter and
# head are fine-tuned on Jena 2020, the hourly front-end and GRU stay as learned (train Jan-early Aug, validation to
# mid-Oct: the long_sequence benchmark's spans; the test span is the rest). Horizons every 10 min for the first
# hour, then hourly to +24 h (docs/long_sequence.md).
pretrained-10min: install  ## retrain the shipped 10-minute model from the hourly one (Jena 2020, 10-minute)
	rm -rf var/pretrain-10min && $(BIN)/stationcast train \
	  --data ../shared/data/jena_2020_10min.csv.gz --transfer-from pipeline/pretrained_models/global \
	  --lookback 1440 --horizons 1-6,12-144/6 --split 0.6,0.2 \
	  --transfer-layers adapter+head --optimizer adam --lr 1e-3 --epochs 3 --steps-per-epoch 100 --patience 2 \
	  --horizon-weighting baseline \
	  --registry var/pretrain-10min --name global_10min --plots docs/figures/pretrained_10min --promote
	rm -rf pipeline/pretrained_models/global_10min
	cp -r var/pretrain-10min/global_10min/v0001 pipeline/pretrained_models/global_10min
	$(BIN)/python -m forecaster.artifact pipeline/pretrained_models/global_10min

data:  ## download the full Jena climate archive (needs the internet)
	$(BIN)/python -m pipeline.download

deploy:  ## the docker-compose stack (Kafka KRaft, service, PostgreSQL, Prometheus, Grafana)
	bash deploy/deploy.sh

deploy-local: install  ## the same topology without containers: embedded broker, service, real Prometheus
	bash deploy/deploy-local.sh

clean:  ## remove runtime state (var/, runs/)
	rm -rf var runs
