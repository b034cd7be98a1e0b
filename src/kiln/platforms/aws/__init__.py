"""Platform aws: AMIs baked from a builder instance, a fleet per release (launch template, Auto
Scaling group, target group) behind one ALB whose listener weights are the rollout, CloudWatch
as the judge's metric source. Each part is built on first use; boto3 is imported only then.
See docs/aws.md."""
