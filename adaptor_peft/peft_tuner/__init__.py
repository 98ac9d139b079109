"""peft_tuner."""
