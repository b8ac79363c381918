"""Training: the loop (``loop``), exits on a frozen backbone (``exits``) and the exit-branch study
(``branch_study``). Nothing on the viewer side (app, viz, report, catalogue, policy, table) imports it."""
