"""Hub model cards of the official ELMo releases (package data of hf_elmo)."""
