# ctest -R example.brats.end_to_end: every command of the BraTS program on a tiny synthetic set.
file(REMOVE_RECURSE "${WORK}")
function(run)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "failed (${rc}): ${ARGN}")
    endif()
endfunction()
# run() that also fails unless stdout + stderr match `regex`.
function(run_expecting regex)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    message("${out}${err}")
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "failed (${rc}): ${ARGN}")
    endif()
    if(NOT "${out}${err}" MATCHES "${regex}")
        message(FATAL_ERROR "the output of ${ARGN} does not match '${regex}'")
    endif()
    set(last_output "${out}${err}" PARENT_SCOPE)
endfunction()
# Fails unless `file` has `expected` lines (`what` says which).
function(expect_lines file expected what)
    file(STRINGS "${file}" lines)
    list(LENGTH lines count)
    if(NOT count EQUAL expected)
        message(FATAL_ERROR "${file} has ${count} lines, expected ${what}")
    endif()
endfunction()
run("${BRATS}" synth --out "${WORK}/train" --cases 4 --extent 64x64x32 --seed 3)
run("${BRATS}" synth --out "${WORK}/test" --cases 2 --extent 64x64x32 --seed 99 --layout nifti2023 --prefix BraTS-GLI)
# convert: a case without its FLAIR stops the conversion (status 1, naming the case), unless
# --skip-bad, which asked for exactly this: status 0, the case listed.
file(COPY "${WORK}/train/Synth_001" "${WORK}/train/Synth_002" DESTINATION "${WORK}/with_bad")
file(REMOVE "${WORK}/with_bad/Synth_002/Synth_002_flair.nii.gz")
execute_process(COMMAND "${BRATS}" convert --data "${WORK}/with_bad" --out "${WORK}/with_bad.h5" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT err MATCHES "Synth_002_flair")
    message(FATAL_ERROR "convert of a case without FLAIR: expected status 1 naming Synth_002_flair, got ${rc}:\n${err}")
endif()
run_expecting("Converted 1 cases into [^\n]*with_bad.h5 .1 skipped.\n\\[WARN\\] skipped Synth_002: [^\n]*missing modality flair"
    "${BRATS}" convert --data "${WORK}/with_bad" --out "${WORK}/with_bad.h5" --skip-bad)
# A run of 3 epochs stopped after 2 (--stop-after-steps), as a killed or interrupted one would be.
run_expecting("Stopped after 4 steps as asked"
    "${BRATS}" train --data "${WORK}/train" --out "${WORK}/run" --patch 64x64 --batch 2 --epochs 3 --steps-per-epoch 2
    --val-batches 1 --pictures 1 --no-progress --stop-after-steps 4)
foreach(f run.cfg metrics.csv metrics.json curves.png checkpoints/best.h5)
    if(NOT EXISTS "${WORK}/run/${f}")
        message(FATAL_ERROR "train wrote no ${f}")
    endif()
endforeach()
expect_lines("${WORK}/run/metrics.csv" 3 "header + 2 epochs")
# The run is never clobbered: a fresh start into it, or a resume with options that would change
# what it learns, is refused (status 2, naming the options) and leaves run.cfg as it was.
file(READ "${WORK}/run/run.cfg" recorded)
function(run_refused regex)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 2 OR NOT "${out}${err}" MATCHES "${regex}")
        message(FATAL_ERROR "expected status 2 and '${regex}' from ${ARGN}, got ${rc}:\n${out}${err}")
    endif()
    file(READ "${WORK}/run/run.cfg" now)
    if(NOT now STREQUAL recorded)
        message(FATAL_ERROR "${ARGN} changed run.cfg:\n${now}")
    endif()
endfunction()
set(same --data "${WORK}/run/store.h5" --out "${WORK}/run" --batch 2 --steps-per-epoch 2 --val-batches 1 --no-progress)
run_refused("--out [^\n]*run already holds a run [^\n]*continue it with --resume latest"
    "${BRATS}" train ${same} --patch 64x64 --epochs 3)
run_refused("--resume: --epochs 4 .the run has 3. differ from the run"
    "${BRATS}" train ${same} --patch 64x64 --epochs 4 --resume latest)
run_refused("--resume: --patch 32x32 .the run has 64x64., --seed 9 .the run has 1. differ"
    "${BRATS}" train ${same} --patch 32x32 --epochs 3 --seed 9 --resume latest)
run_refused("--resume: --loss dice .the run has dice_ce., --no-augment on .the run has off. differ"
    "${BRATS}" train ${same} --patch 64x64 --epochs 3 --loss dice --no-augment --resume latest)
# The third epoch, resumed from the latest checkpoint with the run's options (--lr 1e-3 is the
# default 0.001), from the folder again: its store in the run is reused, not converted again.
run_expecting("Reusing [^\n]*run/store.h5[^\n]* unchanged since it was converted.*Resumed from [^\n]*checkpoints/[^\n]* at epoch 3.*predicted whole with final.h5[^\n]*mean Dice WT [0-9.]+.*predicted whole with best.h5[^\n]*mean Dice WT [0-9.]+.*predict takes (best|final).h5: the higher mean Dice"
    "${BRATS}" train --data "${WORK}/train" --out "${WORK}/run" --batch 2 --steps-per-epoch 2 --val-batches 1 --no-progress
    --patch 64x64 --epochs 3 --lr 1e-3 --pictures 1 --resume latest)
expect_lines("${WORK}/run/metrics.csv" 4 "header + 3 epochs")
if(NOT EXISTS "${WORK}/run/pictures")
    message(FATAL_ERROR "the finished run drew no pictures")
endif()
# The finished run predicted its validation case whole with final.h5 (the last weights) and
# best.h5: the better one's metrics, and the post-processing chosen on it, which predict applies
# unless told otherwise, with those weights.
foreach(f validation.csv postprocess.cfg checkpoints/final.h5)
    if(NOT EXISTS "${WORK}/run/${f}")
        message(FATAL_ERROR "the finished run wrote no ${f}")
    endif()
endforeach()
expect_lines("${WORK}/run/validation.csv" 3 "header + 1 validation case + mean")
file(READ "${WORK}/run/postprocess.cfg" post)
if(NOT post MATCHES "min_component_fraction=[0-9.e+-]+\nmin_enhancing_mm3=[0-9.e+]+\nvalidation_cases=1\ncheckpoint=(best|final).h5\n.*tried_components.0=[0-9.e+-]+ .[01] cases changed.\n.*tried_components.1=.*tried.2000=")
    message(FATAL_ERROR "postprocess.cfg:\n${post}")
endif()
set(chosen_checkpoint "${CMAKE_MATCH_1}.h5")
# A finished run resumed trains no further and makes the end-of-run choice again (how a run is
# re-scored by a newer brats): the same choice, no new epoch.
file(REMOVE "${WORK}/run/postprocess.cfg")
run_expecting("Resumed from [^\n]*at epoch 4.*predicted whole with final.h5.*Post-processing: [^\n]*run/postprocess.cfg"
    "${BRATS}" train --data "${WORK}/run/store.h5" --out "${WORK}/run" --batch 2 --steps-per-epoch 2 --val-batches 1 --no-progress
    --patch 64x64 --epochs 3 --pictures 0 --resume latest)
expect_lines("${WORK}/run/metrics.csv" 4 "header + 3 epochs, after resuming the finished run")
file(READ "${WORK}/run/postprocess.cfg" post_again)
if(NOT post_again STREQUAL post)
    message(FATAL_ERROR "the finished run resumed chose otherwise:\n${post_again}\nagainst\n${post}")
endif()
run_expecting("Loaded [^\n]*run/checkpoints/${chosen_checkpoint} .epoch.*Post-processing[^\n]*run/postprocess.cfg"
    "${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred" --pictures 1)
# Either way round: postprocess.cfg naming final.h5, then final.h5 gone (best.h5 is taken, said).
string(REGEX REPLACE "checkpoint=[a-z]+.h5" "checkpoint=final.h5" post_final "${post}")
file(WRITE "${WORK}/run/postprocess.cfg" "${post_final}")
run_expecting("Loaded [^\n]*run/checkpoints/final.h5 .epoch"
    "${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred_final" --pictures 0)
file(RENAME "${WORK}/run/checkpoints/final.h5" "${WORK}/final.h5.away")
run_expecting("postprocess.cfg names [^\n]*final.h5, which is gone: taking best.h5.*Loaded [^\n]*run/checkpoints/best.h5 .epoch"
    "${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred_final" --pictures 0)
file(RENAME "${WORK}/final.h5.away" "${WORK}/run/checkpoints/final.h5")
file(WRITE "${WORK}/run/postprocess.cfg" "${post}")
run_expecting("Post-processing .--min-et-volume.: enhancing tumour under 1e\\+09 mm.3 becomes necrosis"
    "${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred_post" --pictures 0
    --min-et-volume 1e9)
# Every predicted enhancing tumour became necrosis: ET Dice 0 (the cases have ET), WT and TC
# exactly as without post-processing.
run("${BRATS}" evaluate --pred "${WORK}/pred_post" --truth "${WORK}/test" --out "${WORK}/metrics_post.csv")
run("${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred_plain" --pictures 0 --min-et-volume 0)
run("${BRATS}" evaluate --pred "${WORK}/pred_plain" --truth "${WORK}/test" --out "${WORK}/metrics_plain.csv")
file(STRINGS "${WORK}/metrics_post.csv" post_rows)
file(STRINGS "${WORK}/metrics_plain.csv" plain_rows)
foreach(row 1 2)
    list(GET post_rows ${row} post_row)
    list(GET plain_rows ${row} plain_row)
    string(REPLACE "," ";" post_fields "${post_row}")
    string(REPLACE "," ";" plain_fields "${plain_row}")
    list(GET post_fields 3 post_et)
    list(SUBLIST post_fields 0 3 post_wt_tc)
    list(SUBLIST plain_fields 0 3 plain_wt_tc)
    if(NOT post_et STREQUAL "0.000000" OR NOT post_wt_tc STREQUAL plain_wt_tc)
        message(FATAL_ERROR "predict --min-et-volume 1e9: expected ET Dice 0 and WT/TC unchanged, got\n${post_row}\nagainst\n${plain_row}")
    endif()
endforeach()
# Components: --min-component-fraction replaces the run's choice (said), and the run's
# threshold stays.
run_expecting("Post-processing .--min-component-fraction.: tumour components under 1 of the case's largest become background.*Post-processing .[^\n]*run/postprocess.cfg, chosen on 1 validation cases"
    "${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred_largest" --pictures 0
    --min-component-fraction 1)
run_refused("--min-component-fraction is out of range: 1.5"
    "${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred_largest" --min-component-fraction 1.5)
# A corrupt postprocess.cfg: predict stops with status 1 and names the file and the value.
function(predict_refuses_postprocessing content regex)
    file(WRITE "${WORK}/run/postprocess.cfg" "${content}")
    execute_process(COMMAND "${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred_bad"
        RESULT_VARIABLE rc ERROR_VARIABLE err)
    if(NOT rc EQUAL 1 OR NOT err MATCHES "${regex}")
        message(FATAL_ERROR "predict with a postprocess.cfg of '${content}': expected status 1 and '${regex}', got ${rc}:\n${err}")
    endif()
endfunction()
predict_refuses_postprocessing("min_enhancing_mm3=0\nmin_component_fraction=2\n"
    "postprocess.cfg: min_component_fraction must be a fraction in .0, 1., not '2'")
# A run older than the component rule (no min_component_fraction key) keeps every component.
file(WRITE "${WORK}/run/postprocess.cfg" "min_enhancing_mm3=0\nvalidation_cases=1\ncheckpoint=best.h5\n")
run_expecting("Post-processing .[^\n]*run/postprocess.cfg[^\n]*: every tumour component kept"
    "${BRATS}" predict --run "${WORK}/run" --data "${WORK}/test" --out "${WORK}/pred_old" --pictures 0)
predict_refuses_postprocessing("min_enhancing_mm3=-5\n" "postprocess.cfg: min_enhancing_mm3 must be a volume in mm.3, not '-5'")
file(WRITE "${WORK}/run/postprocess.cfg" "${post}")
file(GLOB written "${WORK}/pred/*-seg.nii.gz")
list(LENGTH written count)
if(NOT count EQUAL 2)
    message(FATAL_ERROR "predict wrote ${count} BraTS 2023 segmentations, expected 2")
endif()
# Without --out the metrics go beside the predictions, not into the current folder.
run_expecting("Wrote [^\n]*pred/metrics.csv" "${BRATS}" evaluate --pred "${WORK}/pred" --truth "${WORK}/test")
expect_lines("${WORK}/pred/metrics.csv" 4 "header + 2 cases + mean")
# export: the trained run as an ONNX model, fixed at the run's patch and symbolic with its batch
# norms folded (each passes the ONNX checker's full check before it is written); a missing
# checkpoint and --batch with --symbolic are named. Without libonnx-dev the command says so.
function(expect_status status regex)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL status OR NOT "${out}${err}" MATCHES "${regex}")
        message(FATAL_ERROR "expected status ${status} and '${regex}' from ${ARGN}, got ${rc}:\n${out}${err}")
    endif()
endfunction()
if(ONNX)
    run_expecting("Wrote [^\n]*onnx/run.onnx .${chosen_checkpoint}, ONNX opset 17; input 'input' 1 x 4 x 64x64, output 'probabilities' sigmoid of 3"
        "${BRATS}" export --run "${WORK}/run" --out "${WORK}/onnx/run.onnx")
    run_expecting("Wrote [^\n]*run_symbolic.onnx [^\n]*input 'input' N x 4 x H x W"
        "${BRATS}" export --run "${WORK}/run" --out "${WORK}/onnx/run_symbolic.onnx" --symbolic --fold-batch-norm)
    expect_status(1 "brats export: error: [^\n]*checkpoints/none.h5"
        "${BRATS}" export --run "${WORK}/run" --checkpoint "${WORK}/run/checkpoints/none.h5" --out "${WORK}/onnx/none.onnx")
    expect_status(2 "brats export: --batch fixes the input shape"
        "${BRATS}" export --run "${WORK}/run" --out "${WORK}/onnx/bad.onnx" --symbolic --batch 2)
    foreach(f none.onnx bad.onnx none.onnx.tmp)
        if(EXISTS "${WORK}/onnx/${f}")
            message(FATAL_ERROR "a failed export left ${WORK}/onnx/${f}")
        endif()
    endforeach()
else()
    expect_status(1 "built without the ONNX export" "${BRATS}" export --run "${WORK}/run" --out "${WORK}/onnx/run.onnx")
endif()
# A time budget: the epoch is cut short when 0.1 min is spent, its validation and the last and best
# checkpoints written within the budget, then the pictures; recorded in run.cfg. The epoch is far
# longer than any machine runs in 6 s, so the cut always falls inside it (with 50 steps a fast
# machine ended the budget at an epoch boundary instead; the trainer tests cover several epochs).
string(TIMESTAMP budget_start "%s" UTC)
run_expecting("Time budget: epoch 1 ends after [0-9]+ of 1000000 steps.*Time budget: 0\\.[01][0-9] of 0\\.10 min spent.*Done: "
    "${BRATS}" train --data "${WORK}/run/store.h5" --out "${WORK}/budget" --patch 32x32 --batch 2 --minutes 0.1
    --steps-per-epoch 1000000 --val-batches 1 --no-progress --pictures 1)
string(TIMESTAMP budget_end "%s" UTC)
math(EXPR budget_wall "${budget_end} - ${budget_start}")
if(budget_wall GREATER 30)
    message(FATAL_ERROR "train --minutes 0.1 took ${budget_wall} s")
endif()
foreach(f checkpoints/best.h5 metrics.csv pictures)
    if(NOT EXISTS "${WORK}/budget/${f}")
        message(FATAL_ERROR "train --minutes wrote no ${f}")
    endif()
endforeach()
file(READ "${WORK}/budget/run.cfg" budget_cfg)
if(NOT budget_cfg MATCHES "train.minutes=0.1\n")
    message(FATAL_ERROR "run.cfg does not record --minutes:\n${budget_cfg}")
endif()
# --plan: the store's fingerprint and the settings planned from it, said and kept in plan.cfg;
# a given option wins over the plan; run.cfg records the plan, so a resume must ask for it too;
# predict mirrors by default for such a run. The precision is planned on the CPU: timed where the
# CPU has bf16 instructions, fp32 without timing where it has none.
run_expecting("\\[PLAN\\]   cases: 4 .4 labelled.*\\[PLAN\\] --patch 64x64 as given .the plan: [0-9]+x[0-9]+.*\\[PLAN\\] --batch [0-9]+: .*\\[PLAN\\] --foreground 0\\.[35]3?: .*\\[PLAN\\] --precision (fp32|bf16): (a training step took [0-9.]+ s in fp32 and [0-9.]+ s in bf16|this CPU has no bf16 instructions).*Done: 2 steps"
    "${BRATS}" train --data "${WORK}/train" --out "${WORK}/planned" --plan --patch 64x64 --epochs 1 --steps-per-epoch 2
    --val-batches 1 --no-progress --pictures 0)
string(FIND "${last_output}" "this CPU has no bf16 instructions" no_bf16_instructions)
file(READ "${WORK}/planned/plan.cfg" plan_cfg)
file(READ "${WORK}/planned/run.cfg" planned_cfg)
if(NOT plan_cfg MATCHES "train.patch=64x64  # given; planned [0-9x]+\ntrain.batch=[0-9]+\n.*train.precision=(fp32|bf16)\n.*predict.tta=on" OR
   NOT planned_cfg MATCHES "train.plan=on\n")
    message(FATAL_ERROR "plan.cfg / run.cfg of a planned run:\n${plan_cfg}\n${planned_cfg}")
endif()
expect_status(2 "--resume: [^\n]*--plan off .the run has on."
    "${BRATS}" train --data "${WORK}/train" --out "${WORK}/planned" --patch 64x64 --epochs 1 --steps-per-epoch 2
    --val-batches 1 --no-progress --resume latest)
# Resumed with its options, the run keeps the precision its plan.cfg recorded (no timing).
run_expecting("\\[PLAN\\] --precision (fp32|bf16): as the run being resumed planned it.*Done: 2 steps"
    "${BRATS}" train --data "${WORK}/train" --out "${WORK}/planned" --plan --patch 64x64 --epochs 1 --steps-per-epoch 2
    --val-batches 1 --no-progress --pictures 0 --resume latest)
# A plan.cfg from before the planned precision: that run trained in fp32, and resumes so.
file(READ "${WORK}/planned/plan.cfg" plan_cfg)
string(REGEX REPLACE "train.precision=[a-z0-9]+\n" "" plan_cfg "${plan_cfg}")
file(WRITE "${WORK}/planned/plan.cfg" "${plan_cfg}")
run_expecting("\\[PLAN\\] --precision fp32: as the run being resumed trained .its plan predates the planned precision.*Done: 2 steps"
    "${BRATS}" train --data "${WORK}/train" --out "${WORK}/planned" --plan --patch 64x64 --epochs 1 --steps-per-epoch 2
    --val-batches 1 --no-progress --pictures 0 --resume latest)
run_expecting("Mirror test-time augmentation: the run's plan"
    "${BRATS}" predict --run "${WORK}/planned" --data "${WORK}/test" --out "${WORK}/pred_planned" --pictures 0)
# predict takes the precision the plan trained in, where the CPU has bf16 instructions (a run
# planned bf16 validated in bf16); without them, or given --precision, it says why it does not.
string(REGEX REPLACE "train.precision=[a-z0-9]+\n" "" plan_cfg "${plan_cfg}")
file(WRITE "${WORK}/planned/plan.cfg" "${plan_cfg}train.precision=bf16\n")
set(predicts_in_fp32 "Convolutions in fp32: [^\n]*plan.cfg trained in bf16, but this CPU has no bf16 instructions")
if(no_bf16_instructions EQUAL -1)  # the plan timed bf16 here: this CPU has them
    run_expecting("--precision bf16: as [^\n]*plan.cfg trained.*Convolutions: bf16 operands, fp32 sums: (vdpbf16ps|AMX)"
        "${BRATS}" predict --run "${WORK}/planned" --data "${WORK}/test" --out "${WORK}/pred_planned" --pictures 0)
else()
    run_expecting("${predicts_in_fp32}"
        "${BRATS}" predict --run "${WORK}/planned" --data "${WORK}/test" --out "${WORK}/pred_planned" --pictures 0)
endif()
run_expecting("${predicts_in_fp32}" "${CMAKE_COMMAND}" -E env LIGHTUNET_CPU_BF16=0
    "${BRATS}" predict --run "${WORK}/planned" --data "${WORK}/test" --out "${WORK}/pred_planned" --pictures 0)
execute_process(COMMAND "${BRATS}" predict --run "${WORK}/planned" --data "${WORK}/test" --out "${WORK}/pred_planned"
                --pictures 0 --precision fp32 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR err MATCHES "bf16")
    message(FATAL_ERROR "predict --precision fp32 of a run planned in bf16: expected fp32 without a word of bf16, got ${rc}:\n${err}")
endif()
# The residual encoder with deep supervision, 2D and 3D: trains, records both in run.cfg (a
# resume without them is refused), and predicts with the top head.
run_expecting("Done: 2 steps"
    "${BRATS}" train --data "${WORK}/run/store.h5" --out "${WORK}/resenc" --arch resenc --deep-supervision --patch 64x64
    --batch 2 --epochs 1 --steps-per-epoch 2 --val-batches 1 --no-progress --pictures 0)
file(READ "${WORK}/resenc/run.cfg" resenc_cfg)
if(NOT resenc_cfg MATCHES "arch=resenc\ndeep_supervision=on")
    message(FATAL_ERROR "run.cfg of a residual, deeply supervised run does not say so:\n${resenc_cfg}")
endif()
execute_process(COMMAND "${BRATS}" train --data "${WORK}/run/store.h5" --out "${WORK}/resenc" --patch 64x64 --batch 2 --epochs 1
    --steps-per-epoch 2 --val-batches 1 --no-progress --pictures 0 --resume latest RESULT_VARIABLE rc ERROR_VARIABLE err)
file(READ "${WORK}/resenc/run.cfg" resenc_cfg_after)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--arch plain .the run has resenc., no --deep-supervision .the run has it on."
   OR NOT resenc_cfg_after STREQUAL resenc_cfg)
    message(FATAL_ERROR "resuming a residual, deeply supervised run as a plain one: expected status 2 naming both, got ${rc}:\n${err}")
endif()
run("${BRATS}" predict --run "${WORK}/resenc" --data "${WORK}/test" --out "${WORK}/resenc_pred" --pictures 0)
run_expecting("Done: 1 steps"
    "${BRATS}" train --data "${WORK}/run/store.h5" --out "${WORK}/resenc3d" --model 3d --arch resenc --deep-supervision
    --patch 32x32x32 --batch 1 --epochs 1 --steps-per-epoch 1 --val-batches 1 --no-progress --pictures 0)
if(ONNX)
    run_expecting("Wrote [^\n]*resenc3d.onnx [^\n]*input 'input' N x 4 x D x H x W"
        "${BRATS}" export --run "${WORK}/resenc3d" --out "${WORK}/onnx/resenc3d.onnx" --symbolic)
    run_expecting("Wrote [^\n]*resenc2d.onnx [^\n]*input 'input' 2 x 4 x 64x64"
        "${BRATS}" export --run "${WORK}/resenc" --out "${WORK}/onnx/resenc2d.onnx" --batch 2)
endif()
# A full disk (a private 60 MB tmpfs, where namespaces allow one): the first checkpoint (52 MB)
# fits, best.h5 does not; train stops with status 1 saying so, and the checkpoint it kept
# predicts.
find_program(UNSHARE unshare)
if(UNSHARE)
    file(MAKE_DIRECTORY "${WORK}/full")
    execute_process(COMMAND "${UNSHARE}" -rm sh -c "mount -t tmpfs -o size=60m tmpfs '${WORK}/full' || exit 77
'${BRATS}' train --data '${WORK}/run/store.h5' --out '${WORK}/full/run' --patch 64x64 --batch 2 --epochs 2 --steps-per-epoch 2 --val-batches 1 --no-progress --pictures 0
echo \"train exited with \$?\"
'${BRATS}' predict --run '${WORK}/full/run' --checkpoint '${WORK}/full/run/checkpoints/checkpoint-000000002.h5' --data '${WORK}/test' --out '${WORK}/full/pred' --pictures 0 && echo predicted"
        RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(rc EQUAL 77 OR "${err}" MATCHES "unshare: ")
        message("disk-full check skipped: no private tmpfs here (${err})")
    elseif(NOT out MATCHES "train exited with 1.*predicted" OR
           NOT err MATCHES "saving checkpoint [^\n]*best.h5 failed, the previous file .if any. is intact: [^\n]*No space left on device")
        message(FATAL_ERROR "train on a full disk: expected status 1 naming the full disk, and the kept checkpoint to predict, got ${rc}:\n${out}${err}")
    endif()
endif()
# A store converted onto a full disk (a private 1 MB tmpfs): status 1 naming the full disk, no
# partial store left, and no crash in libhdf5's exit handler (it crashed there, status 139).
if(UNSHARE)
    file(MAKE_DIRECTORY "${WORK}/full_store")
    execute_process(COMMAND "${UNSHARE}" -rm sh -c "mount -t tmpfs -o size=1m tmpfs '${WORK}/full_store' || exit 77
'${BRATS}' convert --data '${WORK}/train' --out '${WORK}/full_store/s.h5'
echo \"convert exited with \$?\"; ls '${WORK}/full_store'"
        RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(rc EQUAL 77 OR "${err}" MATCHES "unshare: ")
        message("full-disk convert check skipped: no private tmpfs here (${err})")
    elseif(NOT out MATCHES "convert exited with 1\n$" OR NOT err MATCHES "s.h5.partial: [^\n]*No space left on device")
        message(FATAL_ERROR "convert onto a full disk: expected status 1 naming the full disk and nothing left behind, got:\n${out}${err}")
    endif()
endif()
# Kaggle slices: predict writes a mask file per input slice (absent slices stay absent) and a
# metadata CSV; evaluate scores per volume.
run("${BRATS}" synth --out "${WORK}/kaggle" --cases 2 --extent 64x64x24 --seed 7 --layout kaggle)
file(REMOVE "${WORK}/kaggle/volume_1_slice_0.h5" "${WORK}/kaggle/volume_1_slice_9.h5" "${WORK}/kaggle/volume_2_slice_23.h5")
run("${BRATS}" predict --run "${WORK}/run" --data "${WORK}/kaggle" --out "${WORK}/kaggle_pred" --pictures 1)
file(GLOB written RELATIVE "${WORK}/kaggle_pred" "${WORK}/kaggle_pred/volume_*_slice_*.h5")
file(GLOB inputs RELATIVE "${WORK}/kaggle" "${WORK}/kaggle/volume_*_slice_*.h5")
list(SORT written)
list(SORT inputs)
if(NOT written STREQUAL inputs)
    message(FATAL_ERROR "predict wrote masks for ${written}, expected one per input slice ${inputs}")
endif()
expect_lines("${WORK}/kaggle_pred/meta_data.csv" 46 "header + 45 slices")
run("${BRATS}" evaluate --pred "${WORK}/kaggle_pred" --truth "${WORK}/kaggle" --out "${WORK}/kaggle_metrics.csv")
expect_lines("${WORK}/kaggle_metrics.csv" 4 "header + 2 volumes + mean")
# A Kaggle folder that keeps only some slices of each volume converts (the volumes are stored with
# the slices they have) and trains in 2D.
run_expecting("Converted 2 cases [^\n]*\n.*2 of 2 volumes hold only some slices[^\n]*\n  - volume_1: 22 of 155 slices .1-8, 10-23."
    "${BRATS}" convert --data "${WORK}/kaggle" --out "${WORK}/kaggle.h5")
run_expecting("Done: 2 steps"
    "${BRATS}" train --data "${WORK}/kaggle.h5" --out "${WORK}/kaggle_run" --patch 64x64 --batch 2 --epochs 1 --steps-per-epoch 2
    --val-batches 1 --no-progress --pictures 0)
# The 28 real Kaggle slices (22 volumes of 1 or 2 slices each; the whole set refused them before):
# converted with every volume's channel order agreeing, trained in 2D; a 3D patch is refused
# naming why.
if(DEFINED ENV{LIGHTUNET_SHARED_DATA_DIR} AND NOT "$ENV{LIGHTUNET_SHARED_DATA_DIR}" STREQUAL "")
    set(shared "$ENV{LIGHTUNET_SHARED_DATA_DIR}")
else()
    set(shared "${SOURCE_DIR}/../shared/data")
endif()
if(EXISTS "${shared}/kaggle-brats2020-h5")
    run_expecting("22 of 22 volumes hold only some slices.*FLAIR/edema test 19 of 19 volumes agree.*Done: 2 steps"
        "${BRATS}" train --data "${shared}/kaggle-brats2020-h5" --out "${WORK}/real_kaggle" --patch 128x128 --batch 2 --epochs 1
        --steps-per-epoch 2 --val-batches 1 --no-progress --pictures 0)
    execute_process(COMMAND "${BRATS}" train --data "${WORK}/real_kaggle/store.h5" --out "${WORK}/real_kaggle_3d" --model 3d
        --patch 16x64x64 --batch 1 --epochs 1 --steps-per-epoch 1 --no-progress RESULT_VARIABLE rc ERROR_VARIABLE err)
    if(NOT rc EQUAL 1 OR NOT err MATCHES "no case holds 16 contiguous slices for a patch")
        message(FATAL_ERROR "3D training on one- and two-slice volumes: expected status 1 naming the contiguous slices, got ${rc}:\n${err}")
    endif()
else()
    message("real Kaggle slices absent (${shared}): that part skipped")
endif()
