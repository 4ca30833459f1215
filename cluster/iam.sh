#!/usr/bin/env bash
# Create the instance profiles cluster.yaml names, once per AWS account:
#   raydefense-head    EC2 to start and stop workers, iam:PassRole on raydefense-worker only
#                      (without it the head cannot launch a worker with its profile), the bucket
#   raydefense-worker  the bucket only (checkpoints, Parquet, MLflow artifacts)
#
#   bash cluster/iam.sh BUCKET        # needs the aws CLI and IAM rights; safe to rerun
set -euo pipefail
if [[ $# -ne 1 || "$1" == s3://* || "$1" == */* ]]; then
  echo "usage: bash cluster/iam.sh BUCKET (the bucket name, no s3:// and no prefix)" >&2
  exit 2
fi
bucket="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
account="$(aws sts get-caller-identity --query Account --output text)"
policy() { sed -e "s/BUCKET/$bucket/g" -e "s/ACCOUNT_ID/$account/g" "$here/iam/$1"; }
for role in raydefense-head raydefense-worker; do
  aws iam get-role --role-name "$role" >/dev/null 2>&1 ||
    aws iam create-role --role-name "$role" \
      --assume-role-policy-document "file://$here/iam/trust-ec2.json" >/dev/null
  aws iam put-role-policy --role-name "$role" --policy-name "$role" \
    --policy-document "$(policy "${role#raydefense-}-policy.json")"
  aws iam get-instance-profile --instance-profile-name "$role" >/dev/null 2>&1 || {
    aws iam create-instance-profile --instance-profile-name "$role" >/dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
  }
done
echo "instance profiles raydefense-head and raydefense-worker ready for s3://$bucket"
