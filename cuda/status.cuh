// The device status word every step kernel reads first and the checks set (never cleared on the
// device). A step cannot report bad input without a host synchronisation, so a check that finds
// some sets `code` (and `step`, the host's step count of the step that found it) and every later
// launch that reads the status does nothing: parameters and state stay as they were before that
// step until the host reads the status (src/backend/cuda.rs does so whenever the caller reads
// rates, telemetry or a checkpoint), reports the error and clears it.
#pragma once

enum { ALR_STATUS_NON_FINITE = 1, ALR_STATUS_NEGATIVE_SUM_SQ = 2 };

struct DeviceStatus {
    int code;  // 0: fine
    int pad;
    unsigned long long step;  // the step that set `code` (fixed-rate rules; AutoOpt counts on the device)
};

// Records the first error only: later ones (the same step's other tensors) keep it.
__device__ inline void report(DeviceStatus* status, int code, unsigned long long step) {
    if (atomicCAS(&status->code, 0, code) == 0) status->step = step;
}
