#!/usr/bin/env bash
# The whole product on a real (kind) cluster: build both images, load them into kind,
# install MinIO and the chart, apply a CPU quickstart and wait for Succeeded.
#
# Needs docker, kind, kubectl and helm on PATH, and internet access for the images and
# the model (hf://HuggingFaceTB/SmolLM2-135M-Instruct). Not run in CI (no Docker there).
#
#   e2e/kind/run.sh                 # create cluster "finetune-e2e", run, keep it
#   KEEP=0 e2e/kind/run.sh          # delete the cluster at the end
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-finetune-e2e}
TAG=${TAG:-e2e}
KEEP=${KEEP:-1}
OPERATOR_IMAGE=finetune-operator/operator:$TAG
TRAINER_IMAGE=finetune-operator/trainer:$TAG
ACCESS_KEY=finetune
SECRET_KEY=finetune-e2e-secret
ctx="kind-$CLUSTER"
k() { kubectl --context "$ctx" "$@"; }

step() { printf '\n== %s\n' "$*"; }

step "cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
[ "$KEEP" = 1 ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT

step "images"
docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE" .
docker build -f trainer_image/Dockerfile -t "$TRAINER_IMAGE" .
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"

step "MinIO, buckets and the quickstart data"
k apply -f e2e/kind/minio.yaml
k -n minio rollout status deploy/minio --timeout=180s
k create namespace ml --dry-run=client -o yaml | k apply -f -
k -n minio create configmap quickstart-data --dry-run=client -o yaml \
  --from-file=examples/quickstart/train.jsonl --from-file=examples/quickstart/validation.jsonl \
  | k apply -f -
k -n minio delete pod mc --ignore-not-found
k -n minio run mc --restart=Never --image=minio/mc:RELEASE.2025-08-13T08-35-41Z \
  --overrides='{"spec":{"containers":[{"name":"mc","image":"minio/mc:RELEASE.2025-08-13T08-35-41Z",
    "command":["sh","-c","mc alias set e2e http://minio.minio.svc:9000 '"$ACCESS_KEY"' '"$SECRET_KEY"' && mc mb -p e2e/training-data e2e/artifacts && mc cp /data/train.jsonl /data/validation.jsonl e2e/training-data/quickstart/"],
    "volumeMounts":[{"name":"data","mountPath":"/data"}]}],
    "volumes":[{"name":"data","configMap":{"name":"quickstart-data"}}]}}'
k -n minio wait pod/mc --for=jsonpath='{.status.phase}'=Succeeded --timeout=180s
k -n ml create secret generic s3-creds --dry-run=client -o yaml \
  --from-literal=AWS_ACCESS_KEY_ID="$ACCESS_KEY" --from-literal=AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
  --from-literal=AWS_ENDPOINT_URL=http://minio.minio.svc:9000 \
  --from-literal=AWS_S3_ADDRESSING_STYLE=path --from-literal=AWS_REGION=us-east-1 \
  | k apply -f -

step "the chart"
helm --kube-context "$ctx" upgrade --install finetune-operator charts/finetune-operator \
  -n finetune-system --create-namespace --wait --timeout 5m \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="$TAG" \
  --set image.pullPolicy=Never \
  --set trainer.image.repository="${TRAINER_IMAGE%:*}" --set trainer.image.tag="$TAG" \
  --set trainer.image.pullPolicy=Never \
  --set 'watchNamespaces={ml}'

step "a CPU quickstart"
k -n ml delete ftj quickstart-cpu --ignore-not-found
k -n ml apply -f e2e/kind/quickstart-cpu.yaml
if ! k -n ml wait ftj/quickstart-cpu --for=condition=Succeeded --timeout=60m; then
  k -n ml get ftj quickstart-cpu -o yaml
  k -n ml logs job/quickstart-cpu --tail=50 || true
  exit 1
fi
k -n ml get ftj quickstart-cpu -o jsonpath='{.status.phase} {.status.artifacts.uri}{"\n"}'
k -n ml get ftj quickstart-cpu -o jsonpath='{range .status.artifacts.files[*]}{.path} {.sha256}{"\n"}{end}'
echo "kind smoke test: Succeeded"
