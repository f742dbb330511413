"""Resource planning: GPU memory, time and cost of a fine-tuning run, from the model's real architecture.

    from speechtune.plan.estimate import estimate, format_summary
    print(format_summary(estimate("small", mode="lora", batch_size=16)))

Families: Whisper, CTC encoders and FastSpeech2 voices (tts). Modules: info (the model), setup (the run, under
speechtune train's option names), memory (bytes and FLOPs of one step), estimate (time, cost,
recommendation, summary), calibrate (real steps here), catalog, recipe (CLI).
"""
