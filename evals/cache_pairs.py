"""A paraphrase set for the semantic cache: pairs that must hit and pairs that must miss.

Written for this eval (not drawn from any benchmark). Each pair is ``(cached, asked,
category)``: `cached` is the prompt whose answer is in the cache, `asked` the new prompt.

- `MUST_HIT`: `asked` is a rewording of `cached` with the same numbers, dates, negations
  and names (in the same order): the cached answer is right for it.
- `MUST_MISS`: `asked` reads almost like `cached` but needs another answer. Categories:
  ``number``, ``date``, ``negation``, ``antonym`` (un-/in-/non- ...), ``order`` (the same
  names, swapped), ``entity`` (another name), and ``other`` (a change the meaning
  signature does not model: comparatives, verbs of opposite direction, units; kept to
  show what the guard does *not* catch).
"""

from __future__ import annotations

__all__ = ["MUST_HIT", "MUST_MISS"]

MUST_HIT: tuple[tuple[str, str, str], ...] = (
    ("What is the capital of Portugal?", "Which city is the capital of Portugal?", "reword"),
    ("How do I reset my password?", "How can I reset my password?", "reword"),
    ("flights from Paris to Lisbon", "are there flights from Paris to Lisbon", "reword"),
    ("Flights from Paris to Lisbon", "show me flights from Paris to Lisbon", "reword"),
    ("weather in Oslo today", "what's the weather in Oslo today?", "reword"),
    ("What will the weather be like in Oslo tomorrow?", "Oslo weather forecast for tomorrow", "reword"),
    ("is it safe to swim in the lake", "is swimming in the lake safe", "reword"),
    ("Is it safe to drink tap water in Lisbon?", "Can you safely drink the tap water in Lisbon?", "reword"),
    ("The hotel costs 100 euros per night, is that expensive?", "Is 100 euros per night expensive for the hotel?", "reword"),
    ("Convert 9000 euros to dollars", "How much is 9000 euros in dollars?", "reword"),
    ("Summarize the meeting notes from Monday", "Give me a summary of Monday's meeting notes", "reword"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?", "reword"),
    ("Translate 'good morning' into Spanish", "How do you say 'good morning' in Spanish?", "reword"),
    ("What time does the Berlin office open on Friday?", "When does the Berlin office open on Friday?", "reword"),
    ("List three benefits of regular exercise", "Name three benefits of regular exercise", "reword"),
    ("Why don't cats like water?", "Why do cats not like water?", "contraction"),
    ("I can't log in to my account", "I cannot log in to my account", "contraction"),
    ("Is it not too late to book for Saturday?", "Isn't it too late to book for Saturday?", "contraction"),
    ("What's 15 percent of 80?", "What is 15% of 80?", "reword"),
    ("Book a table for 4 at 7pm", "Please book a table for four at 7pm", "number-words"),
    ("We need twenty-five chairs", "we need 25 chairs", "number-words"),
    ("The budget is 10k for the March campaign", "the March campaign budget is 10,000", "number-words"),
    ("Remind me about the dentist on 3 May", "Set a reminder for the dentist on May 3", "date-format"),
    ("What happened in Lisbon in 1755?", "What event took place in Lisbon in 1755?", "reword"),
    ("Compare Python and Rust for web servers", "How do Python and Rust compare for web servers?", "reword"),
    ("How far is Madrid from Barcelona?", "What is the distance from Madrid to Barcelona?", "reword"),
    ("Explain how photosynthesis works", "How does photosynthesis work?", "reword"),
    ("What are the opening hours of the Louvre on Sunday?", "When is the Louvre open on Sunday?", "reword"),
    ("Give me a recipe for vegetarian lasagna", "Can you share a vegetarian lasagna recipe?", "reword"),
    ("how many people live in Tokyo", "What is the population of Tokyo?", "reword"),
    ("Does Ana lead the design team?", "Is Ana the lead of the design team?", "reword"),
    ("Send the report to Bruno before Thursday", "Before Thursday, send Bruno the report", "reword"),
    ("Is the museum free for children under 12?", "Do children under 12 get into the museum for free?", "reword"),
    ("What did we decide about the launch last week?", "What was decided last week about the launch?", "reword"),
    ("Write a haiku about autumn rain", "Compose a haiku about autumn rain", "reword"),
    ("Can I bring my dog on the train to Porto?", "Are dogs allowed on the train to Porto?", "reword"),
    ("Which is cheaper, the bus or the train?", "Is the bus or the train cheaper?", "reword"),
    ("How do I install numpy with pip?", "What's the pip command to install numpy?", "reword"),
    ("the second floor meeting room", "the meeting room on the second floor", "reword"),
    ("Never share your API key, right?", "Is it right that you should never share your API key?", "reword"),
    ("Schedule a call with Maria tomorrow at 10:30", "Set up a call with Maria for tomorrow at 10:30", "reword"),
    ("What is the refund policy for orders over 50 euros?", "Refund policy for orders above 50 euros?", "reword"),
    ("How long does it take to boil an egg?", "How many minutes should I boil an egg?", "reword"),
    ("Is there a pharmacy open tonight near Alfama?", "Any pharmacy near Alfama open tonight?", "reword"),
    ("What does HTTP status 404 mean?", "Meaning of HTTP status code 404?", "reword"),
)

MUST_MISS: tuple[tuple[str, str, str], ...] = (
    # the four pairs of issue 13 item 8
    ("flights from Paris to Lisbon", "from Lisbon to Paris", "order"),
    ("is it safe", "is it unsafe", "antonym"),
    ("costs 100 euros", "costs 9000 euros", "number"),
    ("weather in Oslo today", "weather in Oslo tomorrow", "date"),
    # numbers
    ("Book a table for 4 at 7pm", "Book a table for 6 at 7pm", "number"),
    ("What is 15% of 80?", "What is 15% of 90?", "number"),
    ("Is the museum free for children under 12?", "Is the museum free for children under 6?", "number"),
    ("We need twenty-five chairs", "We need thirty-five chairs", "number"),
    ("What happened in Lisbon in 1755?", "What happened in Lisbon in 1755 and 1756?", "number"),
    ("Convert 9000 euros to dollars", "Convert 900 euros to dollars", "number"),
    ("the second floor meeting room", "the third floor meeting room", "number"),
    ("Set a timer for 10 minutes", "Set a timer for 15 minutes", "number"),
    ("a hotel under 120 euros a night", "a hotel under 1,200 euros a night", "number"),
    # dates and times
    ("Schedule a call with Maria tomorrow at 10:30", "Schedule a call with Maria today at 10:30", "date"),
    ("What did we decide about the launch last week?", "What will we decide about the launch next week?", "date"),
    ("What are the opening hours of the Louvre on Sunday?", "What are the opening hours of the Louvre on Monday?", "date"),
    ("Remind me about the dentist on 3 May", "Remind me about the dentist on 3 June", "date"),
    ("Summarize the meeting notes from Monday", "Summarize the meeting notes from Tuesday", "date"),
    ("meeting at 7am", "meeting at 7pm", "date"),
    ("sales figures for this quarter", "sales figures for last quarter", "date"),
    ("What did I eat yesterday?", "What will I eat tomorrow?", "date"),
    ("the invoice I sent 3 days ago", "the invoice I send in 3 days", "date"),
    # negation
    ("Why do cats like water?", "Why don't cats like water?", "negation"),
    ("Should I take the highway?", "Should I not take the highway?", "negation"),
    ("Is the API key required?", "Is the API key not required?", "negation"),
    ("Which dishes contain nuts?", "Which dishes contain no nuts?", "negation"),
    ("Can I pay with a credit card?", "Can't I pay with a credit card?", "negation"),
    ("a recipe with sugar", "a recipe without sugar", "negation"),
    ("Do I ever need a visa for Brazil?", "Do I never need a visa for Brazil?", "negation"),
    # antonym prefixes
    ("Is this contract valid?", "Is this contract invalid?", "antonym"),
    ("Is the mushroom edible?", "Is the mushroom inedible?", "antonym"),
    ("Is it possible to cancel the order?", "Is it impossible to cancel the order?", "antonym"),
    ("Is parking here legal?", "Is parking here illegal?", "antonym"),
    ("Is the schedule regular?", "Is the schedule irregular?", "antonym"),
    ("Find a smoking room in the hotel", "Find a non-smoking room in the hotel", "antonym"),
    ("Is the data encrypted at rest?", "Is the data unencrypted at rest?", "antonym"),
    ("How do I enable two-factor login?", "How do I disable two-factor login?", "other"),
    # order of names
    ("How far is Madrid from Barcelona?", "How far is Barcelona from Madrid?", "order"),
    ("Convert euros to dollars", "Convert dollars to euros", "other"),
    ("Train times from Porto to Lisbon", "Train times from Lisbon to Porto", "order"),
    ("Did Ana report to Bruno?", "Did Bruno report to Ana?", "order"),
    ("Translate this from English to German", "Translate this from German to English", "order"),
    ("Is Brazil bigger than Argentina?", "Is Argentina bigger than Brazil?", "order"),
    # another name
    ("weather in Oslo today", "weather in Bergen today", "entity"),
    ("Oslo weather today", "Bergen weather today", "entity"),
    ("Does Ana lead the design team?", "Does Maria lead the design team?", "entity"),
    ("How many people live in Tokyo?", "How many people live in Osaka?", "entity"),
    ("Who wrote Pride and Prejudice?", "Who wrote Sense and Sensibility?", "entity"),
    ("Can I bring my dog on the train to Porto?", "Can I bring my dog on the train to Faro?", "entity"),
    ("Compare Python and Rust for web servers", "Compare Python and Go for web servers", "entity"),
    # what the signature does not model
    ("What is the cheapest flight to Rome?", "What is the most expensive flight to Rome?", "other"),
    ("Should I buy shares now?", "Should I sell shares now?", "other"),
    ("What should I do before the interview?", "What should I do after the interview?", "other"),
    ("How do I increase the font size?", "How do I decrease the font size?", "other"),
    ("the run is 10 km long", "the run is 10 miles long", "other"),
)
