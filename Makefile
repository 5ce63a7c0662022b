# protomesh: the two commands a newcomer needs are `make dev` and `make test`.
.PHONY: dev test install generate lint breaking typecheck ci

install: node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

dev: install
	npx tsx scripts/dev.ts

test: install
	npm test

generate: install
	npx buf generate

lint: install
	npx buf lint

breaking: install
	bash .ci/breaking

typecheck: install
	npx tsc --noEmit

ci:
	bash .ci/run
