"""Resource planning: GPU memory, time and cost of a fine-tuning run, from the model's real architecture.

    from speechtune.plan.estimate import estimate, format_summary
    print(format_summary(estimate("small", mode="lora", batch_size=16)))
"""
