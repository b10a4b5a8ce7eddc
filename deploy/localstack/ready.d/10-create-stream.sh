#!/bin/bash
# LocalStack runs this once Kinesis is up (init hook stage READY, /etc/localstack/init/ready.d).
# It creates the stream the proxy mirrors `orders` into, and waits until it is ACTIVE.
# Idempotent: a restart of a LocalStack that kept its state finds the stream already there.
set -euo pipefail

STREAM="${KKP_STREAM:-orders-stream}"
SHARDS="${KKP_SHARDS:-4}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

if awslocal kinesis describe-stream-summary --stream-name "$STREAM" >/dev/null 2>&1; then
  echo "kinesis stream $STREAM already exists"
else
  awslocal kinesis create-stream --stream-name "$STREAM" --shard-count "$SHARDS"
  echo "created kinesis stream $STREAM with $SHARDS shards"
fi
awslocal kinesis wait stream-exists --stream-name "$STREAM"
awslocal kinesis describe-stream-summary --stream-name "$STREAM" \
  --query 'StreamDescriptionSummary.[StreamName,StreamStatus,OpenShardCount]' --output text
