from faas_llm.cli import main

main()
