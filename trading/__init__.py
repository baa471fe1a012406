"""The pure trading core: the same code runs in live actors, backtests, searches and the agent.

Imports only the standard library, numpy and pandas (a test enforces it). Modules:
`values` (exact Decimal prices, quantities, money), `instruments` (Instrument, Bar),
`orders` (orders, the status transition table, fills), `portfolio` (average-cost
positions, P&L, equity curve), `risk` (pre-trade rules with reason codes, trading state,
daily loss and drawdown), `strategy` and `builtin_strategies` (the Strategy SDK and
SMA crossover, RSI mean reversion, breakout), `broker` (the Broker port and the paper
broker), `data` (the MarketDataSource port, a seeded synthetic generator, CSV/Parquet
loading), `errors` (the platform's error tree).
"""
