"""Built-in mappers: pure functions and sans-IO objects that translate one API into another.

* ``identity``: passes the payload through unchanged;
* ``openai_tgi``: OpenAI ``/completions`` and ``/chat/completions`` requests → TGI ``/generate`` requests;
* ``openai_tgi_answers``: TGI answers, errors and event streams → OpenAI answers, errors and event streams.
"""
