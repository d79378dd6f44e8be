#!/bin/bash
# The demo application: greets, works for a while, and says where it ran.
echo "Hello, ${UCLOUD_PARAM_GREETING:-World}! UCloud job ${UCLOUD_JOB_ID} of ${UCLOUD_USERNAME} on $(hostname)"
echo "UCloud's job-report sample rate: ${UCLOUD_METRIC_SAMPLE_RATE}"
sleep "${UCLOUD_PARAM_SECONDS:-10}"
echo "done"
